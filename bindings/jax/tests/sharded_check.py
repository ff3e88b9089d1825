"""Sharded GRASS weights under jit on 4 CPU devices (run by test_sharded.py with
--xla_force_host_platform_device_count=4): FSDP P('data', None) and tensor-parallel
P(None, 'model') weights, explicit or auto mesh axes, `step` (grass layers) and `update` (the
optax form), against the unsharded run.

    python sharded_check.py explicit|auto step|update
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import grass_jax as gj
import model

STEPS = 5


def main(axes, form):
    kind = AxisType.Explicit if axes == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(kind, kind))
    params = model.init_params(jax.random.PRNGKey(0))
    # FSDP for "up", tensor parallel for "down"; the model's embedding lookup and head are
    # plain jnp (not grass's), so they stay replicated.
    specs = {"embed": P(), "up": P("data", None), "up_bias": P(),
             "down": P(None, "model"), "head": P()}
    sharded = jax.tree_util.tree_map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)),
                                     params, specs)
    opt = gj.grass_adamw(1e-2, grass_mask=model.GRASS_MASK, rank=4, refresh_every=3,
                         method="top_r")

    if form == "step":
        @jax.jit
        def step(params, state, ids, target):
            proj = opt.projections(params, state)
            _, grads = opt.value_and_grad(model.loss_fn)(params, proj, ids, target)
            return opt.step(params, grads, state)
    else:
        @jax.jit
        def step(params, state, ids, target):
            # The plain model through grass_linear(x, w, None), which gathers sharded weights
            # as the grass layers do (model.forward's plain jnp product would not).
            no_proj = {"up": None, "down": None}
            grads = jax.grad(lambda p: model.loss_fn(p, no_proj, ids, target))(params)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

    def run(params):
        state = opt.init(params)
        for i in range(STEPS):
            params, state = step(params, state, *model.batch(jax.random.PRNGKey(i), 16))
        return params, state

    with jax.set_mesh(mesh):
        got, got_state = run(sharded)
    want, want_state = run(params)
    for name in params:
        np.testing.assert_array_equal(got_state.layers["up"].indices,
                                      want_state.layers["up"].indices)
        err = float(jnp.max(jnp.abs(got[name] - want[name])))
        assert err <= 2e-5 * max(float(jnp.max(jnp.abs(want[name]))), 1.0), (name, err)
        if axes == "explicit":
            pad = lambda spec: tuple(spec) + (None,) * (got[name].ndim - len(spec))
            assert pad(got[name].sharding.spec) == pad(specs[name]), \
                (name, got[name].sharding.spec, specs[name])
        print(f"{name}: max |sharded - unsharded| = {err:.3g}, {got[name].sharding.spec}")
    print("ok")


if __name__ == "__main__":
    main(*sys.argv[1:3])
