"""max_grad_norm under data parallelism with a replicated state and with shard_state (ZeRO-1)
on N CPU devices: both clip by the norm of the averaged gradients, so they take the same steps.
Prints one JSON line: the largest parameter difference, and the smallest gradient norm seen
(each device's own, to show that the threshold clipped every step)."""

import json
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

import grass_jax as gj
import model

MAX_NORM = 0.05


def run(mesh, params, shard_state, steps):
    opt = gj.grass_adamw(5e-3, grass_mask=model.GRASS_MASK, rank=6, refresh_every=3,
                         axis_name="data", shard_state=shard_state, max_grad_norm=MAX_NORM)
    state = opt.init(params)
    specs = opt.state_specs(state)

    def local(p, s, ids, t):
        proj = opt.projections(p, s)
        loss, grads = opt.value_and_grad(model.loss_fn)(p, proj, ids, t)
        p, s = opt.step(p, grads, s)
        return p, s, jax.lax.pmin(opt.global_norm(grads), "data")

    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), specs, P("data"), P("data")),
                              out_specs=(P(), specs, P()), check_vma=False))
    p = jax.device_put(params, NamedSharding(mesh, P()))
    s = jax.device_put(state, jax.tree_util.tree_map(lambda sp: NamedSharding(mesh, sp), specs))
    smallest = float("inf")
    for i in range(steps):
        ids, t = jax.device_put(model.batch(jax.random.PRNGKey(i), 32),
                                NamedSharding(mesh, P("data")))
        p, s, norm = f(p, s, ids, t)
        smallest = min(smallest, float(norm))
    return p, smallest


def main(n_dev, steps):
    mesh = jax.make_mesh((n_dev,), ("data",))
    params = model.init_params(jax.random.PRNGKey(0))
    a, norm = run(mesh, params, False, steps)
    b, _ = run(mesh, params, True, steps)
    print(json.dumps({"params": max(float(jnp.abs(a[k] - b[k]).max()) for k in a),
                      "smallest_norm": norm, "max_norm": MAX_NORM}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
