"""Gradient clipping and loss scaling of the optimizer handles (grass_optimizer_grad_sq_norm,
grass_optimizer_step_scaled) through plain ctypes against numpy references: the compressed
gradient's squared norm is that of the selected rows of G = dYᵀX (summed over micro-batches,
times their scales), at most the full norm under scaling none; a dense step with grad_scale s
is numpy's AdamW on s * g; clipping by the global norm over a GRASS layer and a dense
parameter brings the scaled global norm to max_norm."""
import ctypes
import os
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bindings", "torch"))
import grass_torch as gt  # noqa: E402  (its config structs mirror grass.h)

sys.path.pop(0)

P, I64, I32, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
LIB = ctypes.CDLL(os.environ.get("GRASS_LIB", os.path.join(ROOT, "target", "release", "libgrass.so")))
for name, args in {
    "grass_context_create_cpu": [ctypes.POINTER(P)],
    "grass_projection_config_init": [ctypes.POINTER(gt.ProjectionConfig)],
    "grass_adamw_config_init_sized": [ctypes.POINTER(gt.AdamWConfig), ctypes.c_size_t],
    "grass_optimizer_create_sparse": [P, ctypes.POINTER(gt.ProjectionConfig),
                                      ctypes.POINTER(gt.AdamWConfig), I64, I64, I64, I32, I32,
                                      ctypes.POINTER(P)],
    "grass_optimizer_create_dense": [P, ctypes.POINTER(gt.AdamWConfig), I64, I32, I32,
                                     ctypes.POINTER(P)],
    "grass_optimizer_backward": [P, I64, P, P, P, P],
    "grass_optimizer_grad_sq_norm": [P, P, ctypes.POINTER(F32), P],
    "grass_optimizer_step_scaled": [P, P, P, F32, F32, P],
    "grass_optimizer_projection": [P, ctypes.POINTER(P)],
    "grass_projection_selection": [P, ctypes.POINTER(ctypes.POINTER(I32)),
                                   ctypes.POINTER(ctypes.POINTER(F32))],
}.items():
    getattr(LIB, name).argtypes = args
    getattr(LIB, name).restype = I32
LIB.grass_last_error_message.restype = ctypes.c_char_p
LIB.grass_optimizer_destroy.argtypes = [P]
LIB.grass_optimizer_destroy.restype = None


def ok(status):
    assert status == 0, LIB.grass_last_error_message().decode()


def addr(a):
    return a.ctypes.data


CTX = P()
ok(LIB.grass_context_create_cpu(ctypes.byref(CTX)))


def configs(**proj):
    pc, ac = gt.ProjectionConfig(), gt.AdamWConfig()
    ok(LIB.grass_projection_config_init(ctypes.byref(pc)))
    ok(LIB.grass_adamw_config_init_sized(ctypes.byref(ac), ctypes.sizeof(ac)))
    for k, v in proj.items():
        setattr(pc, k, v)
    return pc, ac


def sparse(m, n, b, **proj):
    pc, ac = configs(**proj)
    o = P()
    ok(LIB.grass_optimizer_create_sparse(CTX, ctypes.byref(pc), ctypes.byref(ac), m, n, b, 0, 0,
                                         ctypes.byref(o)))
    return o


def dense(numel):
    _, ac = configs()
    o = P()
    ok(LIB.grass_optimizer_create_dense(CTX, ctypes.byref(ac), numel, 0, 0, ctypes.byref(o)))
    return o, ac


def sq_norm(o, grad=None):
    out = F32(-1.0)
    ok(LIB.grass_optimizer_grad_sq_norm(o, None if grad is None else addr(grad), ctypes.byref(out),
                                        None))
    return float(out.value)


def selection(o, r):
    proj, idx, sc = P(), ctypes.POINTER(I32)(), ctypes.POINTER(F32)()
    ok(LIB.grass_optimizer_projection(o, ctypes.byref(proj)))
    ok(LIB.grass_projection_selection(proj, ctypes.byref(idx), ctypes.byref(sc)))
    return np.ctypeslib.as_array(idx, (r,)).copy(), np.ctypeslib.as_array(sc, (r,)).copy()


def rand(rng, *shape):
    return (rng.standard_normal(shape) + 0.1).astype(np.float32)


@pytest.mark.parametrize("side,method,scaling", [(gt.SIDE_COLS, 4, 1), (gt.SIDE_ROWS, 4, 0),
                                                 (gt.SIDE_COLS, 2, 0), (gt.SIDE_ROWS, 0, 1)])
def test_compressed_sq_norm_is_the_selected_rows_of_g(side, method, scaling):
    rng = np.random.default_rng(side * 10 + method)
    m, n, b, r = 24, 40, 9, 8
    o = sparse(m, n, b, rank=r, side=side, method=method, scaling=scaling, seed=3)
    try:
        g = np.zeros((m, n))
        for _ in range(3):  # micro-batches accumulate
            x, dy = rand(rng, b, n), rand(rng, b, m)
            ok(LIB.grass_optimizer_backward(o, b, addr(x), addr(dy), None, None))
            g += dy.T.astype(np.float64) @ x
        idx, sc = selection(o, r)
        rows = g.T if side == gt.SIDE_COLS else g  # the projected side's rows
        want = float(np.sum((sc[:, None].astype(np.float64) * rows[idx]) ** 2))
        got = sq_norm(o)
        assert got == pytest.approx(want, rel=1e-5)
        if scaling == 1:
            assert got <= float(np.sum(g ** 2)) * (1 + 1e-6)
    finally:
        LIB.grass_optimizer_destroy(o)


def numpy_adamw(w, g, m, v, t, lr, cfg):
    """AdamW in f32 as grass computes it (decay off by default: weight_decay 0)."""
    b1, b2, eps = np.float32(cfg.beta1), np.float32(cfg.beta2), np.float32(cfg.eps)
    m[:] = b1 * m + (np.float32(1) - b1) * g
    v[:] = b2 * v + (np.float32(1) - b2) * g * g
    c1, c2 = np.float32(1 - cfg.beta1 ** t), np.float32(1 - cfg.beta2 ** t)
    u = (m / c1) / (np.sqrt(v / c2) + eps)
    w[:] = w + np.float32(-lr) * u


def test_dense_step_scaled_is_adamw_on_the_scaled_gradient():
    rng = np.random.default_rng(5)
    numel, lr = 3000, 1e-2
    o, cfg = dense(numel)
    try:
        w = rand(rng, numel)
        wr, mr, vr = w.copy(), np.zeros(numel, np.float32), np.zeros(numel, np.float32)
        for t, s in enumerate((0.5, 0.125, 3.0), start=1):
            g = rand(rng, numel)
            assert sq_norm(o, g) == pytest.approx(float(np.sum(g.astype(np.float64) ** 2)), rel=1e-6)
            ok(LIB.grass_optimizer_step_scaled(o, addr(w), addr(g), lr, s, None))
            numpy_adamw(wr, np.float32(s) * g, mr, vr, t, lr, cfg)
            np.testing.assert_allclose(w, wr, rtol=0, atol=1e-6)
    finally:
        LIB.grass_optimizer_destroy(o)


def test_global_norm_clipping_over_two_handles():
    """The recipe of docs/api.md: the squared norms of every handle summed, one factor for all;
    the norms of the scaled gradients then add up to max_norm."""
    rng = np.random.default_rng(7)
    m, n, b, r, micro, max_norm = 16, 32, 6, 8, 2, 0.05
    layer = sparse(m, n, b, rank=r)
    bias, _ = dense(m)
    try:
        bias_grad = np.zeros(m, np.float32)
        for _ in range(micro):
            x, dy = rand(rng, b, n), rand(rng, b, m)
            ok(LIB.grass_optimizer_backward(layer, b, addr(x), addr(dy), None, None))
            bias_grad += dy.sum(axis=0)
        total = sq_norm(layer) + sq_norm(bias, bias_grad)
        norm = np.sqrt(total) / micro
        clip = min(1.0, max_norm / norm)
        assert clip < 1.0, "the test wants a gradient above max_norm"
        scale = clip / micro
        assert np.sqrt(total) * scale == pytest.approx(max_norm, rel=1e-6)
        w, wb = rand(rng, m * n), rand(rng, m)
        ok(LIB.grass_optimizer_step_scaled(layer, addr(w), None, 4e-2, scale, None))
        ok(LIB.grass_optimizer_step_scaled(bias, addr(wb), addr(bias_grad), 2e-3, scale, None))
    finally:
        LIB.grass_optimizer_destroy(layer)
        LIB.grass_optimizer_destroy(bias)
