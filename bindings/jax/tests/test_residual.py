"""The residual step (FRUGAL-style signSGD on the rows the selection leaves out): the op against
numpy on random inputs, and grass_adamw(residual="sign") through `step` (X and dY handed over by
the backward pass) and `update` (the optax form) against the research twin's steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import grass_jax as gj
from grass_jax import ops
from grass_jax.research import grass_reference
import model


def numpy_residual(w, x, dy, idx, step, side):
    """w (m, n) after the residual step, in f64, and a mask of the entries whose gradient is
    too close to 0 for its sign to be decided by an f32 computation."""
    g = dy.astype(np.float64).T @ x.astype(np.float64)                # (m, n)
    rows = g if side == "rows" else g.T
    keep = np.ones(rows.shape[0], bool)
    keep[np.asarray(idx)] = False
    move = step * np.sign(rows) * keep[:, None]
    bound = np.abs(dy).T.astype(np.float64) @ np.abs(x).astype(np.float64)
    undecided = np.abs(g) <= 1e-5 * bound
    if side == "cols":
        move = move.T
    return w.astype(np.float64) - move, undecided


def check_residual(got, w, want, undecided, dtype):
    got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
    tol = 1e-6 if dtype == jnp.float32 else 2 ** -8 * np.abs(want).max()
    ok = (np.abs(got - want) <= tol) | undecided
    assert ok.all(), f"{(~ok).sum()} of {ok.size} entries differ"
    assert undecided.mean() < 0.01  # the comparison decided almost every entry


@pytest.mark.parametrize("side", ["rows", "cols"])
@pytest.mark.parametrize("dtype, act", [(jnp.float32, jnp.float32), (jnp.bfloat16, jnp.float32),
                                        (jnp.float32, jnp.bfloat16)])
def test_residual_step_matches_numpy(platform, side, dtype, act):
    """W of `dtype`, X and dY of `act` (bf16 activations take the library's converting path)."""
    k = jax.random.split(jax.random.PRNGKey(11), 4)
    m, n, b, r = 40, 24, 19, 7
    w = jax.random.normal(k[0], (m, n)).astype(dtype)
    x = jax.random.normal(k[1], (b, n)).astype(act)
    dy = jax.random.normal(k[2], (b, m)).astype(act)
    d = m if side == "rows" else n
    idx = jnp.sort(jax.random.choice(k[3], d, (r,), replace=False)).astype(jnp.int32)
    want, undecided = numpy_residual(np.asarray(w, np.float32), np.asarray(x, np.float32),
                                     np.asarray(dy, np.float32), idx, 3e-2 * 0.5 * 0.2, side)
    got, skipped = jax.jit(lambda w: ops.residual_step(
        w, x, dy, idx, 3e-2, side=side, alpha=0.5, residual_scale=0.2))(jnp.array(w))
    assert int(skipped) == ops.STEP_APPLIED
    check_residual(got, w, want, undecided, dtype)
    # the selected units are untouched
    sel = np.asarray(idx)
    w32, g32 = np.asarray(w, np.float32), np.asarray(got, np.float32)
    if side == "rows":
        np.testing.assert_array_equal(g32[sel], w32[sel])
    else:
        np.testing.assert_array_equal(g32[:, sel], w32[:, sel])


def test_residual_step_stacked_and_gated(platform):
    """A stack of 3: slice 1 is gated by its compressed step's outcome (no move), slice 2 has
    a NaN in dY (no move, outcome SKIPPED_NONFINITE), slice 0 moves as numpy says."""
    k = jax.random.split(jax.random.PRNGKey(12), 4)
    m, n, b, r = 16, 30, 9, 5
    w = jax.random.normal(k[0], (3, m, n))
    x, dy = jax.random.normal(k[1], (3, b, n)), jax.random.normal(k[2], (3, b, m))
    dy = dy.at[2, 4, 3].set(jnp.nan)
    idx = jnp.stack([jnp.sort(jax.random.choice(kk, n, (r,), replace=False))
                     for kk in jax.random.split(k[3], 3)]).astype(jnp.int32)
    skipped = jnp.array([ops.STEP_APPLIED, ops.STEP_SKIPPED_NONFINITE, ops.STEP_APPLIED],
                        jnp.int32)
    got, out = ops.residual_step(jnp.array(w), x, dy, idx, 1e-2, skipped, side="cols",
                                 alpha=0.25, residual_scale=0.1)
    np.testing.assert_array_equal(out, [ops.STEP_APPLIED, ops.STEP_SKIPPED_NONFINITE,
                                        ops.STEP_SKIPPED_NONFINITE])
    want, undecided = numpy_residual(np.asarray(w[0]), np.asarray(x[0]), np.asarray(dy[0]),
                                     idx[0], 1e-2 * 0.25 * 0.1, "cols")
    check_residual(got[0], w[0], want, undecided, jnp.float32)
    np.testing.assert_array_equal(got[1:], w[1:])


def test_residual_step_refuses_bad_arguments():
    w, x, dy = jnp.ones((8, 6)), jnp.ones((4, 6)), jnp.ones((4, 8))
    idx = jnp.arange(3, dtype=jnp.int32)
    with pytest.raises(ValueError, match="x must be"):
        ops.residual_step(w, dy, x, idx, 1e-2, side="rows")
    with pytest.raises(ValueError, match="residual_scale"):
        ops.residual_step(w, x, dy, idx, 1e-2, side="rows", residual_scale=-1.0)
    with pytest.raises(TypeError, match="one dtype"):
        ops.residual_step(w, x, dy.astype(jnp.bfloat16), idx, 1e-2, side="rows")
    with pytest.raises(jax.errors.JaxRuntimeError, match="indices must be sorted"):
        jax.block_until_ready(ops.residual_step(w, x, dy, jnp.array([2, 0, 1], jnp.int32),
                                                1e-2, side="rows"))


KW = dict(grass_mask=model.GRASS_MASK, rank=8, refresh_every=5, method="multinomial_nr",
          scaling="none", side="cols", alpha=0.25, seed=7, state_dtype=jnp.float32)
BATCH = 32


def run(kind, steps=10, layout_in_out=False):
    """`steps` steps of the test model with residual="sign": through the library's `step`, its
    optax `update`, or the research twin; returns the params and the layers' indices."""
    params = model.init_params(jax.random.PRNGKey(3))
    if kind == "twin":
        opt = grass_reference(1e-2, dense=optax.adamw(1e-2), residual="sign",
                              residual_scale=gj._lib.defaults()["residual_scale"], **KW)
    else:
        opt = gj.grass_adamw(1e-2, dense=optax.adamw(1e-2), residual="sign", **KW)
    p, s = jax.tree_util.tree_map(jnp.array, params), opt.init(params)

    @jax.jit
    def by_step(p, s, ids, target):
        proj = opt.projections(p, s, tokens=BATCH)
        loss, grads = opt.value_and_grad(model.loss_fn)(p, proj, ids, target)
        return opt.step(p, grads, s)

    @jax.jit
    def by_update(p, s, ids, target):
        g = jax.grad(model.loss_fn)(p, None, ids, target)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    one = by_step if kind == "step" else by_update
    for i in range(steps):
        ids, target = model.batch(jax.random.PRNGKey(50 + i), BATCH)
        p, s = one(p, s, ids, target)
    return params, p, {n: np.asarray(s.layers[n].indices) for n in ("up", "down")}


def test_grass_adamw_residual_matches_the_twin():
    """10 steps with refreshes every 5: the library's step (residual from the handed-over X and
    dY, in chunks), its optax update and the twin's take the same steps, and every row moved."""
    p0, p_step, idx_step = run("step")
    _, p_upd, idx_upd = run("update")
    _, p_twin, idx_twin = run("twin")
    for name in ("up", "down"):
        np.testing.assert_array_equal(idx_step[name], idx_twin[name])
        np.testing.assert_array_equal(idx_upd[name], idx_twin[name])
    for name in p0:
        # f32 rounding of tiny gradients amplified by Adam's normalisation (as in the
        # research twin's own test); a sign that flips on a gradient entry near 0 moves one
        # entry by 2·lr·alpha·residual_scale = 5e-4, which this bound also admits
        np.testing.assert_allclose(p_step[name], p_twin[name], rtol=0, atol=6e-4,
                                   err_msg=name)
        np.testing.assert_allclose(p_upd[name], p_twin[name], rtol=0, atol=6e-4,
                                   err_msg=name)
        close = np.abs(np.asarray(p_step[name]) - np.asarray(p_twin[name])) <= 1e-5
        assert close.mean() > 0.99, name
    for name in ("up", "down"):
        # no row is left where it was: the residual moved what the selection left out
        moved = np.abs(np.asarray(p_step[name]) - np.asarray(p0[name])).max(axis=0)
        assert moved.min() > 1e-4, name


def test_residual_changes_the_step():
    """The same run without the residual leaves unselected columns where they were: the
    option is not a no-op."""
    params = model.init_params(jax.random.PRNGKey(3))
    opt = gj.grass_adamw(1e-2, dense=optax.adamw(1e-2), **KW)
    step = model.make_step(opt, donate=False)
    s = opt.init(params)
    ids, target = model.batch(jax.random.PRNGKey(50), BATCH)
    p, s, _ = step(params, s, ids, target)
    cols = np.abs(np.asarray(p["up"]) - np.asarray(params["up"])).max(axis=0)
    assert (cols == 0).sum() == model.DIM - 8


def test_residual_in_out_layout_matches_out_in():
    """A Flax-style (in, out) kernel takes the same residual step as its (out, in) transpose."""
    params = model.init_params(jax.random.PRNGKey(3))
    ids, target = model.batch(jax.random.PRNGKey(50), BATCH)
    res = {}
    for layout in ("out_in", "in_out"):
        opt = gj.grass_adamw(1e-2, dense=optax.adamw(1e-2), residual="sign", layout=layout
                             if layout == "out_in" else
                             {k: "in_out" for k in params}, **KW)
        p = dict(params)
        if layout == "in_out":
            p = {k: (v.T if k in ("up", "down") else v) for k, v in params.items()}

        def loss(p, proj):
            q = p if layout == "out_in" else {k: (v.T if k in ("up", "down") else v)
                                              for k, v in p.items()}
            x = q["embed"][ids].mean(axis=1)
            if layout == "out_in":
                h = gj.grass_linear(x, p["up"], proj["up"])
                h = jax.nn.gelu(h + p["up_bias"])
                y = gj.grass_linear(h, p["down"], proj["down"])
            else:
                h = gj.grass_linear(x, p["up"], proj["up"], layout="in_out")
                h = jax.nn.gelu(h + p["up_bias"])
                y = gj.grass_linear(h, p["down"], proj["down"], layout="in_out")
            return jnp.mean((y @ q["head"].T - target) ** 2)

        s = opt.init(p)
        proj = opt.projections(p, s, tokens=BATCH)
        _, grads = opt.value_and_grad(loss)(p, proj)
        res[layout] = opt.step(p, grads, s)[0]
        # the optax form, from the full gradient of the plain product
        g = jax.grad(lambda p: loss(p, {"up": None, "down": None}))(p)
        u, _ = opt.update(g, s, p)
        res[layout + " update"] = optax.apply_updates(p, u)
    for name in ("up", "down"):
        for form in ("", " update"):
            np.testing.assert_allclose(res["in_out" + form][name].T, res["out_in" + form][name],
                                       rtol=0, atol=1e-6, err_msg=name + form)
        np.testing.assert_allclose(res["out_in update"][name], res["out_in"][name], rtol=0,
                                   atol=1e-5, err_msg=name)


def test_residual_refusals():
    params = model.init_params(jax.random.PRNGKey(3))
    opt = gj.grass_adamw(1e-2, residual="sign", **KW)
    s = opt.init(params)
    with pytest.raises(ValueError, match="tokens"):
        opt.projections(params, s)
    with pytest.raises(ValueError, match="residual"):
        gj.grass_adamw(1e-2, residual="sgd", **KW)
    with pytest.raises(ValueError, match="residual_scale"):
        gj.grass_adamw(1e-2, residual="sign", residual_scale=-0.5, **KW)
    with pytest.raises(ValueError, match="data parallel"):
        gj.grass_adamw(1e-2, residual="sign", axis_name="dp", **KW)
    # projections made without tokens (residual="none" optimizer) carry no activations
    plain = gj.grass_adamw(1e-2, **KW)
    proj = plain.projections(params, s)
    ids, target = model.batch(jax.random.PRNGKey(50), BATCH)
    _, grads = opt.value_and_grad(model.loss_fn)(params, proj, ids, target)
    with pytest.raises(ValueError, match="carry no activations"):
        opt.step(params, grads, s)
    # a batch of another size than the projections were made for is named
    proj = opt.projections(params, s, tokens=BATCH + 1)
    with pytest.raises(ValueError, match="sees 32 tokens"):
        opt.value_and_grad(model.loss_fn)(params, proj, ids, target)
    # micro-batch accumulation is refused: the sign of a sum is not the sum of signs
    proj = opt.projections(params, s, tokens=BATCH // 2)
    _, g1 = opt.value_and_grad(model.loss_fn)(params, proj, ids[:16], target[:16])
    with pytest.raises(ValueError, match="accumulate"):
        opt.accumulate(None, g1)
