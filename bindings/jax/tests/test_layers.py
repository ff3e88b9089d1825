"""The Flax layers: GrassDense / GrassDenseGeneral (linen) and GrassLinear (nnx) are drop-ins
for nn.Dense / nn.DenseGeneral / nnx.Linear (same parameters from the same key, same outputs),
their (in, out) kernels are trained in that layout through the projections collection or the
optax form, and the misuses fail early, naming the weight."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytest.importorskip("flax")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

from conftest import assert_close  # noqa: E402
import grass_jax as gj  # noqa: E402
from grass_jax import layers as gl  # noqa: E402

KW = dict(rank=4, refresh_every=3, method="top_r", scaling="none")


def test_grass_dense_is_nn_dense():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 12))
    for kw in (dict(features=7), dict(features=7, use_bias=False),
               dict(features=7, dtype=jnp.bfloat16, param_dtype=jnp.float32),
               dict(features=7, kernel_init=nn.initializers.normal(0.3),
                    bias_init=nn.initializers.ones)):
        ref, ours = nn.Dense(**kw), gl.GrassDense(**kw)
        p_ref = ref.init(jax.random.PRNGKey(1), x)
        p = ours.init(jax.random.PRNGKey(1), x)
        jax.tree_util.tree_map(np.testing.assert_array_equal, p, p_ref)
        y, y_ref = ours.apply(p, x), ref.apply(p_ref, x)
        assert y.dtype == y_ref.dtype, kw
        assert_close(y, y_ref, dtype=y.dtype, what=str(kw))


def test_grass_dense_general_is_dense_general_with_a_flat_kernel():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 16))
    ref, ours = nn.DenseGeneral((4, 8)), gl.GrassDenseGeneral((4, 8))
    p = ours.init(jax.random.PRNGKey(1), x)
    assert p["params"]["kernel"].shape == (16, 32)
    p_ref = {"params": {"kernel": p["params"]["kernel"].reshape(16, 4, 8),
                        "bias": p["params"]["bias"].reshape(4, 8)}}
    assert_close(ours.apply(p, x), ref.apply(p_ref, x), what="q projection")
    h = ours.apply(p, x)                                   # (2, 6, 4, 8)
    out, out_ref = gl.GrassDenseGeneral(16, axis=(-2, -1)), nn.DenseGeneral(16, axis=(-2, -1))
    q = out.init(jax.random.PRNGKey(2), h)
    q_ref = {"params": {"kernel": q["params"]["kernel"].reshape(4, 8, 16),
                        "bias": q["params"]["bias"]}}
    assert_close(out.apply(q, h), out_ref.apply(q_ref, h), what="output projection")
    with pytest.raises(ValueError, match="trailing input axes"):
        gl.GrassDenseGeneral(16, axis=(1, 2)).init(jax.random.PRNGKey(2), h)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.gelu(gl.GrassDense(16)(x))
        h = gl.GrassDenseGeneral((2, 8))(h)
        h = gl.GrassDenseGeneral(16, axis=(-2, -1))(h)
        return nn.Dense(4)(h)


def data():
    k = jax.random.split(jax.random.PRNGKey(3), 2)
    return jax.random.normal(k[0], (32, 16)), jax.random.normal(k[1], (32, 4))


def test_linen_projections_collection_equals_the_optax_form():
    """The compressed gradients (projections in the "grass" collection, opt.step) and the
    optax form on jax.grad's gradients train the same rows to the same params."""
    model, (x, y) = MLP(), data()
    params = model.init(jax.random.PRNGKey(4), x)["params"]
    mask = lambda path, leaf: gl.is_grass_kernel(path, leaf) and "Dense_0" not in str(path)
    opt = gj.grass_adamw(1e-2, grass_mask=mask, layout="in_out", **KW)

    def loss(params, proj, x, y):
        return jnp.mean((model.apply({"params": params, "grass": proj}, x) - y) ** 2)

    @jax.jit
    def step(params, state):
        proj = opt.projections(params, state)
        _, grads = opt.value_and_grad(loss)(params, proj, x, y)
        return opt.step(params, grads, state)

    @jax.jit
    def update(params, state):
        grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x) - y) ** 2))(params)
        u, state = opt.update(grads, state, params)
        return optax.apply_updates(params, u), state

    a, sa = params, opt.init(params)
    b, sb = params, opt.init(params)
    for _ in range(5):
        a, sa = step(a, sa)
        b, sb = update(b, sb)
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = jax.tree_util.tree_leaves(b)
    for (path, la), lb in zip(flat_a, flat_b):
        assert_close(la, lb, scale=1.0, what=jax.tree_util.keystr(path))
    assert not np.array_equal(a["GrassDense_0"]["kernel"], params["GrassDense_0"]["kernel"])
    assert sa.layers["GrassDenseGeneral_1"]["kernel"].indices.tolist() == \
        sb.layers["GrassDenseGeneral_1"]["kernel"].indices.tolist()


def test_layer_refuses_a_projection_declared_out_in():
    model, (x, y) = MLP(), data()
    params = model.init(jax.random.PRNGKey(4), x)["params"]
    opt = gj.grass_adamw(1e-2, grass_mask=gl.is_grass_kernel, layout="out_in", **KW)
    proj = opt.projections(params, opt.init(params))
    with pytest.raises(ValueError, match=r"\['GrassDense_0'\]\['kernel'\] was declared stored "
                                         r"\(out, in\)"):
        model.apply({"params": params, "grass": proj}, x)


def test_multi_axis_dense_general_kernel_is_refused_with_a_message():
    params = nn.DenseGeneral((2, 8)).init(jax.random.PRNGKey(0), jnp.ones((1, 16)))["params"]
    opt = gj.grass_adamw(1e-2, grass_mask=lambda p, l: l.ndim > 1, layout="in_out", rank=2)
    with pytest.raises(ValueError, match=r"\['kernel'\] has shape \(16, 2, 8\).*DenseGeneral"):
        opt.init(params)


def test_nnx_grass_linear_is_nnx_linear_and_trains_with_nnx_optimizer():
    x, y = data()
    ours, ref = gl.GrassLinear(16, 16, rngs=nnx.Rngs(0)), nnx.Linear(16, 16, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(ours.kernel[...], ref.kernel[...])
    assert_close(ours(x), ref(x), what="nnx output")

    tx = gj.grass_adamw(1e-2, **gl.flax_options(**KW))
    start = nnx.as_pure(nnx.state(ours, nnx.Param))
    optimizer = nnx.Optimizer(ours, tx, wrt=nnx.Param)
    loss = lambda model: jnp.mean((model(x)[:, :4] - y) ** 2)

    @nnx.jit
    def step(model, optimizer):
        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    losses = [float(step(ours, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]

    # The same five steps by hand on the plain params.
    params = {"kernel": start["kernel"], "bias": start["bias"]}
    state = tx.init(params)
    f = lambda p: jnp.mean(((x @ p["kernel"] + p["bias"])[:, :4] - y) ** 2)
    for _ in range(5):
        u, state = jax.jit(tx.update)(jax.grad(f)(params), state, params)
        params = optax.apply_updates(params, u)
    assert_close(ours.kernel[...], params["kernel"], scale=1.0, what="kernel")
    assert_close(ours.bias[...], params["bias"], scale=1.0, what="bias")


class ScanBody(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return h + gl.GrassDense(16)(jnp.tanh(h)), None


class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        scan = nn.scan(ScanBody, variable_axes={"params": 0, gl.PROJECTIONS: 0},
                       split_rngs={"params": True}, length=3)
        return scan(name="layers")(x, None)[0]


def test_nn_scan_stack_is_declared_and_trains_per_slice():
    """nn.scan stacks the kernels (3, in, out): refused until declared stacked=1; then the
    projections collection is scanned with the params, each slice selects its own rows, and
    the layer path equals the optax form."""
    model = Scanned()
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    with pytest.raises(ValueError, match=r"\['layers'\]\['GrassDense_0'\]\['kernel'\] has "
                                         r"shape \(3, 16, 16\).*stacked=1"):
        gj.grass_adamw(1e-2, **gl.flax_options(**KW)).init(params)
    opt = gj.grass_adamw(1e-2, stacked=1, **gl.flax_options(**KW))
    state = opt.init(params)

    def loss(params, proj, x):
        return jnp.mean(model.apply({"params": params, gl.PROJECTIONS: proj}, x) ** 2)

    proj = opt.projections(params, state)
    _, grads = jax.jit(opt.value_and_grad(loss))(params, proj, x)
    a, sa = opt.step(params, grads, state)
    g = jax.grad(lambda p: jnp.mean(model.apply({"params": p}, x) ** 2))(params)
    u, sb = opt.update(g, state, params)
    b = optax.apply_updates(params, u)
    idx = sa.layers["layers"]["GrassDense_0"]["kernel"].indices
    assert idx.shape == (3, 4) and len({tuple(r) for r in np.asarray(idx)}) > 1
    np.testing.assert_array_equal(idx, sb.layers["layers"]["GrassDense_0"]["kernel"].indices)
    assert_close(a["layers"]["GrassDense_0"]["kernel"], b["layers"]["GrassDense_0"]["kernel"],
                 scale=1.0, what="stacked kernel")


class Wide(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.gelu(gl.GrassDense(64)(x))  # GrassDense_0
        return gl.GrassDense(8)(h)


def test_flax_layers_default_to_the_rank_rule():
    """flax_options() without a rank: each kernel gets the library's rule on its input features
    (linen GrassDense 96 -> 64 and 64 -> 8; nnx GrassLinear 200 -> 8: d/2 to a multiple of 8),
    and trains."""
    from grass_jax import _lib
    x = jax.random.normal(jax.random.PRNGKey(5), (32, 96))
    y = jax.random.normal(jax.random.PRNGKey(6), (32, 8))
    model = Wide()
    params = model.init(jax.random.PRNGKey(7), x)["params"]
    opt = gj.grass_adamw(1e-2, **gl.flax_options(refresh_every=3))
    ranks = opt.layer_ranks(params)
    assert ranks["GrassDense_0"]["kernel"] == _lib.default_rank(96) == 48
    assert ranks["GrassDense_1"]["kernel"] == _lib.default_rank(64) == 32
    assert ranks["GrassDense_0"]["bias"] is None

    def loss(params, proj):
        return jnp.mean((model.apply({"params": params, "grass": proj}, x) - y) ** 2)

    @jax.jit
    def step(params, state):
        value, grads = opt.value_and_grad(loss)(params, opt.projections(params, state))
        params, state = opt.step(params, grads, state)
        return params, state, value

    p, s = params, opt.init(params)
    losses = []
    for _ in range(6):
        p, s, value = step(p, s)
        losses.append(float(value))
    assert losses[-1] < losses[0]
    assert s.layers["GrassDense_0"]["kernel"].m.shape == (48, 64)

    lin = gl.GrassLinear(200, 8, rngs=nnx.Rngs(1))
    tx = gj.grass_adamw(1e-2, **gl.flax_options())
    optimizer = nnx.Optimizer(lin, tx, wrt=nnx.Param)
    assert tx.layer_ranks(nnx.as_pure(nnx.state(lin, nnx.Param)))["kernel"] == 104
    xs = jax.random.normal(jax.random.PRNGKey(8), (16, 200))

    @nnx.jit
    def nnx_step(model, optimizer):
        value, grads = nnx.value_and_grad(lambda m: jnp.mean((m(xs) - 1.0) ** 2))(model)
        optimizer.update(model, grads)
        return value

    nnx_losses = [float(nnx_step(lin, optimizer)) for _ in range(4)]
    assert nnx_losses[-1] < nnx_losses[0]


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.up = gl.GrassLinear(24, 40, rngs=rngs)
        self.down = gl.GrassLinear(40, 8, rngs=rngs)

    def __call__(self, x, proj=None):
        if proj is None:
            return self.down(nnx.gelu(self.up(x)))
        return self.down(nnx.gelu(self.up(x, proj["up"]["kernel"])), proj["down"]["kernel"])


def test_nnx_merge_attaches_projections_as_threading_them_by_hand():
    """gl.merge puts each GrassLinear's projection in the merged model: the compressed path
    needs nothing threaded through __call__, and gives what passing them by hand gives, bit for
    bit; a projections tree of other params is refused, naming the layer."""
    model = NnxMLP(nnx.Rngs(2))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.as_pure(params)
    opt = gj.grass_adamw(1e-2, **gl.flax_options(**KW))
    kx, ky = jax.random.split(jax.random.PRNGKey(9))
    x, y = jax.random.normal(kx, (32, 24)), jax.random.normal(ky, (32, 8))

    def attached(params, proj):
        return jnp.mean((gl.merge(graphdef, params, proj)(x) - y) ** 2)

    def by_hand(params, proj):
        return jnp.mean((nnx.merge(graphdef, params)(x, proj) - y) ** 2)

    def run(loss):
        @jax.jit
        def step(params, state):
            value, grads = opt.value_and_grad(loss)(params, opt.projections(params, state))
            params, state = opt.step(params, grads, state)
            return params, state, value

        p, s, values = params, opt.init(params), []
        for _ in range(5):
            p, s, value = step(p, s)
            values.append(float(value))
        return p, values

    pa, la = run(attached)
    pb, lb = run(by_hand)
    assert la == lb and la[-1] < la[0]
    for a, b in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(pa["up"]["kernel"], params["up"]["kernel"])
    assert "grass_projection" not in nnx.state(model)  # the module itself is unchanged
    with pytest.raises(ValueError, match=r"GrassLinear up has no entry in the projections"):
        gl.merge(graphdef, params, {"down": {"kernel": None}})
    with pytest.raises(ValueError, match=r"projection of GrassLinear down must be a Projection"):
        gl.merge(graphdef, params, {"up": {"kernel": None}, "down": {"kernel": 1.0}})
