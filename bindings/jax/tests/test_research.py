"""grass_jax.research, the jnp twin of grass_adamw used to try levers: with no research option
it takes the library's steps (same rows, same updates), and each residual rule moves the rows
that are not selected as its numpy reference says."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import grass_jax as gj
from grass_jax import ops
from grass_jax.research import allocate_ranks, cyclic_select, grass_reference
import model


def plain_step(opt):
    @jax.jit
    def step(p, s, ids, target):
        loss, g = jax.value_and_grad(model.loss_fn)(p, None, ids, target)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss
    return step


@pytest.mark.parametrize("refresh_mode, state_dtype, row_warmup", [
    ("reset", jnp.float32, 0), ("carry", jnp.bfloat16, 0), ("reset", jnp.float32, 3),
    ("carry", jnp.float32, 4)])
def test_twin_takes_the_library_steps(refresh_mode, state_dtype, row_warmup):
    """12 steps with refreshes every 5 (reset or carry, f32 or bf16 moments, side "cols",
    with and without a row warm-up): the twin's weights equal grass_adamw's to f32 rounding
    (bf16: to one moment rounding)."""
    params = model.init_params(jax.random.PRNGKey(3))
    kw = dict(grass_mask=model.GRASS_MASK, rank=8, refresh_every=5, method="multinomial_nr",
              scaling="none", side="cols", alpha=0.25, refresh_mode=refresh_mode, seed=7,
              state_dtype=state_dtype, row_warmup=row_warmup)
    lib = gj.grass_adamw(1e-2, dense=optax.adamw(1e-2), **kw)
    ref = grass_reference(1e-2, dense=optax.adamw(1e-2), **kw)
    p_lib, s_lib = jax.tree_util.tree_map(jnp.array, params), lib.init(params)
    p_ref, s_ref = jax.tree_util.tree_map(jnp.array, params), ref.init(params)
    step_lib, step_ref = model.make_step(lib), plain_step(ref)
    for i in range(12):
        ids, target = model.batch(jax.random.PRNGKey(50 + i), 32)
        p_lib, s_lib, _ = step_lib(p_lib, s_lib, ids, target)
        p_ref, s_ref, _ = step_ref(p_ref, s_ref, ids, target)
    for name in ("up", "down"):
        np.testing.assert_array_equal(s_lib.layers[name].indices, s_ref.layers[name].indices)
    # f32: rounding of tiny gradients, amplified by Adam's normalisation, at ~lr·1e-3 per
    # step; bf16: the moments' rounding, ~1% of a step of lr·alpha
    atol = 1e-5 if state_dtype == jnp.float32 else 5e-4
    for name in params:
        np.testing.assert_allclose(p_ref[name], p_lib[name], rtol=0, atol=atol, err_msg=name)
    moved = [float(jnp.max(jnp.abs(p_lib[n] - params[n]))) for n in ("up", "down")]
    assert min(moved) > 1e-3  # the steps were real


def numpy_step(w, g, idx, m, v, t, lr, alpha, residual, scale, prev_norm=0.0):
    """One step of a weight whose rows `idx` are selected (side rows), fresh moments."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    gs = g[idx]
    m = b1 * m + (1 - b1) * gs
    v = b2 * v + (1 - b2) * gs * gs
    u = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    res = g.copy()
    res[idx] = 0
    if residual == "sign":
        s = np.sign(res)
    elif residual == "fira":
        s = np.linalg.norm(u) / np.linalg.norm(gs) * res
        if prev_norm > 0 and np.linalg.norm(s) > 1.01 * prev_norm:
            s *= 1.01 * prev_norm / np.linalg.norm(s)
    else:
        s = np.zeros_like(res)
    out = w - lr * alpha * scale * s
    out[idx] -= lr * alpha * u
    return out


@pytest.mark.parametrize("residual, scale", [("sign", 0.1), ("fira", 1.0), ("none", 1.0)])
def test_residual_rules_match_numpy(residual, scale):
    """Two steps on one 20 x 12 weight (side rows, rank 5, top_r on fixed scores): the first
    selects and steps, the second reuses the rows; every row (selected or not) against numpy."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(20, 12)).astype(np.float32)
    g1, g2 = (rng.normal(size=(20, 12)).astype(np.float32) for _ in range(2))
    g1[3] *= 5  # top_r keeps the largest rows: make the choice unambiguous
    opt = grass_reference(3e-2, grass_mask={"w": True}, rank=5, refresh_every=100,
                          row_warmup=0, method="top_r", side="rows", alpha=0.5, residual=residual,
                          residual_scale=scale, state_dtype=jnp.float32)
    p = {"w": jnp.asarray(w0)}
    s = opt.init(p)
    u, s = opt.update({"w": jnp.asarray(g1)}, s, p)
    p1 = optax.apply_updates(p, u)
    u, s = opt.update({"w": jnp.asarray(g2)}, s, p1)
    p2 = optax.apply_updates(p1, u)
    idx = np.sort(np.argsort(-np.linalg.norm(g1, axis=1))[:5])
    np.testing.assert_array_equal(s.layers["w"].indices, idx)
    m = np.zeros((5, 12))
    v = np.zeros((5, 12))
    ref1 = numpy_step(w0, g1, idx, m, v, 1, 3e-2, 0.5, residual, scale)
    np.testing.assert_allclose(p1["w"], ref1, rtol=1e-5, atol=1e-6)
    # second step: moments carried by hand in the reference
    b1, b2 = 0.9, 0.999
    m = (1 - b1) * g1[idx]
    v = (1 - b2) * g1[idx] ** 2
    prev = 0.0
    if residual == "fira":
        u1 = (m / (1 - b1)) / (np.sqrt(v / (1 - b2)) + 1e-8)
        r1 = g1.copy()
        r1[idx] = 0
        prev = np.linalg.norm(np.linalg.norm(u1) / np.linalg.norm(g1[idx]) * r1)
    ref2 = numpy_step(ref1, g2, idx, m, v, 2, 3e-2, 0.5, residual, scale, prev)
    np.testing.assert_allclose(p2["w"], ref2, rtol=1e-5, atol=1e-6)


def test_rank_by_fraction_keeps_the_state_bytes():
    """The trainer's model (side cols): ranks proportional to d, the moments' bytes within
    2% of the uniform rank's (rounding to whole rows)."""
    shapes = [(128, 128)] * 4 + [(352, 128), (352, 128), (128, 352)]
    uni = allocate_ranks(shapes, 32, "cols", "uniform")
    frac = allocate_ranks(shapes, 32, "cols", "fraction")
    assert [r for *_, r in uni] == [32] * 7
    bytes_ = lambda a: sum(r * k for _, _, k, r in a)
    assert abs(bytes_(frac) - bytes_(uni)) <= 0.02 * bytes_(uni)
    ratio = [r / d for _, d, _, r in frac]
    assert max(ratio) - min(ratio) < 0.01
    assert [ops.resolve_side(m, n, "cols")[1] for m, n in shapes] == [d for _, d, _, _ in frac]


@pytest.mark.parametrize("state_rounding", ["nearest", "stochastic"])
def test_stochastic_rounding_keeps_the_second_moment_decaying(state_rounding):
    """bf16 moments, one gradient and then 200 zero gradients: V should decay by
    beta2^200 = 0.819. Rounded to nearest it never moves (each decay of 0.1% is below half a
    bf16 ulp); rounded stochastically its mean follows the f32 decay."""
    rng = np.random.default_rng(1)
    g = jnp.asarray(rng.normal(size=(64, 256)).astype(np.float32))
    opt = grass_reference(1e-3, grass_mask={"w": True}, rank=64, refresh_every=1000,
                          row_warmup=0, method="top_r", side="rows", seed=3,
                          state_dtype=jnp.bfloat16, state_rounding=state_rounding)
    p = {"w": jnp.zeros((64, 256), jnp.float32)}
    update = jax.jit(opt.update)
    _, s = update({"w": g}, opt.init(p), p)
    v0 = np.asarray(s.layers["w"].v, np.float64)
    zero = {"w": jnp.zeros_like(g)}
    for _ in range(200):
        _, s = update(zero, s, p)
    v = np.asarray(s.layers["w"].v, np.float64)
    ratio = v.sum() / v0.sum()
    if state_rounding == "nearest":
        np.testing.assert_array_equal(v, v0)
    else:
        assert abs(ratio - 0.999 ** 200) < 0.01, ratio
        assert np.mean(v != v0) > 0.99
    with pytest.raises(ValueError, match="state_rounding"):
        grass_reference(1e-3, grass_mask={"w": True}, rank=8, state_rounding="up")


@pytest.mark.parametrize("second_moment", ["full", "row", "factored"])
def test_second_moment_rules_match_numpy(second_moment):
    """Two steps of one weight, every row selected (side rows, top_r, no warm-up): the update
    is -lr·alpha·m̂/(√v̂ + eps) with v̂ Adam's per element, one per row (the mean square of the
    row's gradient) or Adafactor's row x column / mean(row); V holds r x k, r x 1 or r + k
    numbers."""
    rng = np.random.default_rng(4)
    r, k, lr, alpha, b1, b2, eps = 6, 10, 1e-2, 0.25, 0.9, 0.999, 1e-8
    gs = [rng.normal(size=(r, k)) * rng.uniform(0.1, 3.0, size=(r, 1)) for _ in range(2)]
    opt = grass_reference(lr, grass_mask={"w": True}, rank=r, refresh_every=100, row_warmup=0,
                          method="top_r", side="rows", alpha=alpha, second_moment=second_moment,
                          state_dtype=jnp.float32)
    p = {"w": jnp.zeros((r, k), jnp.float32)}
    s = opt.init(p)
    assert s.layers["w"].v.shape == {"full": (r, k), "row": (r, 1),
                                     "factored": (r + k, 1)}[second_moment]
    m = np.zeros((r, k))
    v = np.zeros((r, k)) if second_moment == "full" else None
    row, col = np.zeros((r, 1)), np.zeros((1, k))
    for t, g in enumerate(gs, 1):
        u, s = opt.update({"w": jnp.asarray(g, jnp.float32)}, s, p)
        m = b1 * m + (1 - b1) * g
        if second_moment == "full":
            v = b2 * v + (1 - b2) * g * g
            vhat = v
        else:
            row = b2 * row + (1 - b2) * np.mean(g * g, axis=1, keepdims=True)
            col = b2 * col + (1 - b2) * np.mean(g * g, axis=0, keepdims=True)
            vhat = row if second_moment == "row" else row * col / row.mean()
        want = -lr * alpha * (m / (1 - b1 ** t)) / (np.sqrt(vhat / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(np.asarray(u["w"]), want, rtol=2e-5, atol=1e-9)
    with pytest.raises(ValueError, match="second_moment"):
        grass_reference(1e-3, grass_mask={"w": True}, rank=8, second_moment="diag")
    with pytest.raises(ValueError, match="refresh_mode must be 'reset'"):
        grass_reference(1e-3, grass_mask={"w": True}, rank=8, second_moment="factored",
                        refresh_mode="carry")


@pytest.mark.parametrize("d, r", [(12, 4), (10, 4), (7, 7)])
def test_cyclic_selects_every_unit_once_per_cycle(d, r):
    """Each refresh takes r distinct sorted units; over a cycle of ceil(d/r) refreshes every
    unit is taken (exactly once when r divides d), and the next cycle draws a new order."""
    blocks = -(-d // r)
    cycles = []
    for c in range(2):
        seen = []
        for slot in range(blocks):
            idx, sc = cyclic_select(d, r, jnp.uint32(c * blocks + slot), 5, 2)
            idx = np.asarray(idx)
            assert len(set(idx)) == r and np.all(np.diff(idx) > 0) and np.all(sc == 1)
            seen += list(idx)
        assert set(seen) == set(range(d))
        if d % r == 0:
            assert sorted(seen) == list(range(d))
        cycles.append(seen)
    if r < d:
        assert cycles[0] != cycles[1]


def test_first_moment_dtype_keeps_m_in_bf16_beside_f32_v():
    opt = grass_reference(1e-3, grass_mask={"w": True}, rank=4, side="rows",
                          state_dtype=jnp.float32, first_moment_dtype=jnp.bfloat16)
    s = opt.init({"w": jnp.zeros((8, 16), jnp.float32)})
    assert s.layers["w"].m.dtype == jnp.bfloat16 and s.layers["w"].v.dtype == jnp.float32
