"""A weight declares once how it is stored, (out, in) or (in, out), and is updated in that
layout: on square weights, where the shapes cannot tell, the entries of the stored array that a
step changes are compared one by one with a dense reference of the same update. Calls that read
a weight in another layout than the declared one fail at trace time, naming the weight."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import grass_jax as gj

N, R, LR, ALPHA, EPS = 16, 5, 1e-2, 0.25, 1e-8
# top_r with no scaling: the reference picks the same rows from the dense gradient itself.
# row_warmup 0: the reference below is Adam's own first step
KW = dict(rank=R, method="top_r", scaling="none", alpha=ALPHA, eps=EPS, refresh_every=10,
          row_warmup=0)


def problem():
    k = jax.random.split(jax.random.PRNGKey(7), 3)
    kernel = jax.random.normal(k[0], (N, N)) / jnp.sqrt(N)      # stored (in, out), as Flax
    x = jax.random.normal(k[1], (12, N))
    target = jax.random.normal(k[2], (12, N))
    return kernel, x, target


def dense_loss(kernel, x, target):
    return jnp.mean((jnp.tanh(x @ kernel) - target) ** 2)


def reference_step(kernel, x, target):
    """One compressed AdamW step from zero state, computed densely in the (in, out) layout:
    the default side "cols" selects input features, i.e. rows of the (in, out) kernel; the
    first Adam step moves each selected entry by lr·α·g/(|g| + eps)."""
    g = jax.grad(dense_loss)(kernel, x, target)                  # (in, out)
    scores = np.linalg.norm(np.asarray(g), axis=1)
    rows = np.sort(np.argsort(-scores, kind="stable")[:R])
    want = np.array(kernel)
    gr = np.asarray(g)[rows]
    want[rows] -= LR * ALPHA * gr / (np.abs(gr) + EPS)
    return want, rows


def changed(before, after):
    return np.asarray(before) != np.asarray(after)


def check_against_reference(kernel, new_kernel, x, target):
    want, rows = reference_step(kernel, x, target)
    mask = np.zeros((N, N), bool)
    mask[rows] = True
    got_mask = changed(kernel, new_kernel)
    assert (got_mask == mask).all(), (
        f"changed entries differ from the reference: expected rows {rows.tolist()} of the "
        f"stored (in, out) kernel, got rows {np.unique(np.argwhere(got_mask)[:, 0]).tolist()} "
        f"and columns {np.unique(np.argwhere(got_mask)[:, 1]).tolist()}")
    np.testing.assert_allclose(np.asarray(new_kernel), want, rtol=0, atol=1e-6)


def layer_step(opt, params, x, target, layout):
    def loss(params, proj, x, target):
        y = gj.grass_linear(x, params["kernel"], proj["kernel"], layout=layout)
        return jnp.mean((jnp.tanh(y) - target) ** 2)

    state = opt.init(params)

    @jax.jit
    def step(params, state):
        proj = opt.projections(params, state)
        _, grads = opt.value_and_grad(loss)(params, proj, x, target)
        return opt.step(params, grads, state)

    return step(params, state)


def test_in_out_kernel_changes_the_entries_of_the_dense_reference():
    kernel, x, target = problem()
    opt = gj.grass_adamw(LR, grass_mask={"kernel": True}, layout="in_out", **KW)
    params, state = layer_step(opt, {"kernel": kernel}, x, target, "in_out")
    check_against_reference(kernel, params["kernel"], x, target)
    assert state.layers["kernel"].indices.tolist() == reference_step(kernel, x, target)[1].tolist()


def test_out_in_storage_of_the_same_weight_gives_the_transposed_update():
    kernel, x, target = problem()
    opt = gj.grass_adamw(LR, grass_mask={"w": True}, layout="out_in", **KW)

    def loss(params, proj, x, target):
        return jnp.mean((jnp.tanh(gj.grass_linear(x, params["w"], proj["w"])) - target) ** 2)

    state = opt.init({"w": kernel.T})
    proj = opt.projections({"w": kernel.T}, state)
    _, grads = opt.value_and_grad(loss)({"w": kernel.T}, proj, x, target)
    params, _ = opt.step({"w": kernel.T}, grads, state)
    check_against_reference(kernel, params["w"].T, x, target)


def test_optax_update_of_in_out_kernel_changes_the_entries_of_the_dense_reference():
    kernel, x, target = problem()
    opt = gj.grass_adamw(LR, grass_mask={"kernel": True}, layout="in_out", **KW)
    params = {"kernel": kernel}
    grads = jax.grad(lambda p: dense_loss(p["kernel"], x, target))(params)
    updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    check_against_reference(kernel, optax.apply_updates(params, updates)["kernel"], x, target)


def test_transposed_call_of_a_declared_in_out_kernel_fails_at_trace_time():
    """The issue's silent case: an (in, out) kernel passed as kernel.T to a call that reads
    (out, in). Square, so the shapes agree; the declared layout does not."""
    kernel, x, target = problem()
    opt = gj.grass_adamw(LR, grass_mask={"attn": {"kernel": True}}, layout="in_out", **KW)
    params = {"attn": {"kernel": kernel}}
    proj = opt.projections(params, opt.init(params))

    def loss(params, proj):
        w = params["attn"]["kernel"].T
        return jnp.sum(gj.grass_linear(x, w, proj["attn"]["kernel"]))

    with pytest.raises(ValueError, match=r"\['attn'\]\['kernel'\] was declared stored "
                                         r"\(in, out\).*layout='in_out'"):
        jax.jit(opt.value_and_grad(loss))(params, proj)


def test_in_out_call_of_a_declared_out_in_weight_fails():
    kernel, x, _ = problem()
    opt = gj.grass_adamw(LR, grass_mask={"w": True}, **KW)
    proj = opt.projections({"w": kernel}, opt.init({"w": kernel}))
    with pytest.raises(ValueError, match=r"\['w'\] was declared stored \(out, in\)"):
        gj.grass_linear(x, kernel, proj["w"], layout="in_out")


def test_undeclared_flax_kernel_is_refused_at_init():
    kernel, _, _ = problem()
    opt = gj.grass_adamw(LR, grass_mask=lambda path, leaf: leaf.ndim == 2, **KW)
    with pytest.raises(ValueError, match=r"\['Dense_0'\]\['kernel'\].*layout='in_out'"):
        opt.init({"Dense_0": {"kernel": kernel, "bias": jnp.zeros(N)}})


def test_layout_per_weight_and_bad_layout():
    opt = gj.grass_adamw(LR, grass_mask={"a": True, "b": True}, rank=2,
                         layout={"a": "in_out", "b": "out_in"})
    params = {"a": jnp.ones((8, 4)), "b": jnp.ones((8, 4))}
    ranks = opt.layer_ranks(params)
    cfgs = [c for c in opt.layer_configs(params)[2]]
    assert [(c.m, c.n, c.layout) for c in cfgs] == [(4, 8, "in_out"), (8, 4, "out_in")]
    assert ranks == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="layout must be 'out_in'"):
        gj.grass_adamw(LR, grass_mask={"a": True}, layout="io")
    with pytest.raises(ValueError, match="layout of GRASS leaf \\['a'\\]"):
        gj.grass_adamw(LR, grass_mask={"a": True}, layout=lambda p, l: "oi").init(
            {"a": jnp.ones((4, 4))})


def test_three_dimensional_leaf_is_never_silently_a_stack():
    params = {"w": jnp.ones((3, 8, 8))}
    with pytest.raises(ValueError, match=r"\['w'\] has shape \(3, 8, 8\).*stacked=1.*"
                                         r"DenseGeneral"):
        gj.grass_adamw(LR, grass_mask={"w": True}, rank=2).init(params)
    state = gj.grass_adamw(LR, grass_mask={"w": True}, rank=2, stacked=1).init(params)
    assert state.layers["w"].indices.shape == (3, 2)
    with pytest.raises(ValueError, match=r"stacked=2 declares"):
        gj.grass_adamw(LR, grass_mask={"w": True}, rank=2, stacked=2).init(params)
