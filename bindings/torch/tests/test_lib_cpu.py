"""The framework-free ctypes layer on the CPU backend, with numpy buffers and references."""
import ctypes
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import grass_torch as gt  # noqa: E402

LIB = gt.Lib()


def addr(a):
    return a.ctypes.data


def rand(rng, *shape):
    return (rng.standard_normal(shape) + 0.1).astype(np.float32)


def test_sparse_grad_matches_numpy_on_both_sides():
    rng = np.random.default_rng(0)
    ctx = LIB.context(None)
    b, m, n = 9, 14, 6
    x, dy = rand(rng, b, n), rand(rng, b, m)
    full = dy.T.astype(np.float64) @ x
    for side in (gt.SIDE_ROWS, gt.SIDE_COLS):
        _, d, k = LIB.resolve_side(m, n, side)
        idx = np.array([0, 2, 2, d - 1], dtype=np.int32)
        rho = np.array([1.0, 0.5, 2.0, 3.0], dtype=np.float32)
        g = np.full((4, k), np.nan, dtype=np.float32)
        wsb = LIB.size_query("grass_sparse_grad_workspace_size", ctx, m, n, b, side, 4, 0)
        ws = np.zeros(max(wsb, 1), dtype=np.uint8)
        LIB.call("grass_sparse_grad", ctx, m, n, b, side, 4, 0, addr(x), addr(dy), addr(idx), addr(rho), addr(g), 0,
                 addr(ws), wsb, None)
        rows = full if side == gt.SIDE_ROWS else full.T
        want = rows[idx] * rho[:, None]
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_errors_carry_status_and_message():
    ctx = LIB.context(None)
    out = gt.SZ()
    with pytest.raises(gt.GrassError) as e:
        LIB.call("grass_sparse_grad_workspace_size", ctx, 8, 8, 4, gt.SIDE_ROWS, 9, 0, ctypes.byref(out))
    assert e.value.status == 2 and "r = 9 exceeds" in str(e.value)


def test_cuda_context_reports_why_when_unavailable():
    """Where grass_cuda_available says no, creating a CUDA context fails with
    GRASS_ERROR_CUDA_UNAVAILABLE (100), names the function and gives the same reason; where it
    says yes, the context is created."""
    available, reason = LIB.cuda_available()
    assert reason, "grass_cuda_available gives a reason either way"
    if available:
        assert LIB.context(0) is not None
        return
    with pytest.raises(gt.GrassError) as e:
        LIB.context(0)
    assert e.value.status == 100, e.value
    message = str(e.value)
    assert "grass_context_create_cuda: " in message, message
    assert reason in message, (reason, message)
    assert 0 not in LIB._contexts, "no context cached after a failure"
    print(f"no CUDA context here: {message}")


