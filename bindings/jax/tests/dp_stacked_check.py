"""Data-parallel training of the scanned model of test_stacked.py (stacked GRASS weights,
clipping by global norm) on N CPU devices against one device on the concatenated batch.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=N (test_data_parallel.py does);
prints one JSON line with the largest differences."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import grass_jax as gj
import test_stacked as ts


def main(n_dev, steps):
    assert jax.device_count() == n_dev, jax.devices()
    mesh = jax.make_mesh((n_dev,), ("data",))
    kw = dict(grass_mask=ts.MASK, stacked=1, rank=5, refresh_every=3, refresh_mode="carry",
              max_grad_norm=0.5)
    one = gj.grass_adamw(3e-3, **kw)
    many = gj.grass_adamw(3e-3, axis_name="data", **kw)

    def local(params, state, ids, target):
        proj = many.projections(params, state)
        loss, grads = many.value_and_grad(ts.loss_scan)(params, proj, ids, target)
        params, state = many.step(params, grads, state)
        return params, state, jax.lax.pmean(loss, "data")

    step_many = jax.jit(jax.shard_map(local, mesh=mesh,
                                      in_specs=(P(), P(), P("data"), P("data")),
                                      out_specs=(P(), P(), P()), check_vma=False))
    params = ts.init_params(jax.random.PRNGKey(0))
    p1, s1, losses = ts.train(one, ts.loss_scan, params, steps)
    pn, sn = jax.device_put((params, many.init(params)), NamedSharding(mesh, P()))
    worst = {"loss": 0.0, "params": 0.0}
    for i in range(steps):
        ids, target = jax.device_put(ts.batch(i), NamedSharding(mesh, P("data")))
        pn, sn, loss = step_many(pn, sn, ids, target)
        worst["loss"] = max(worst["loss"], abs(float(loss) - losses[i]) / abs(losses[i]))
    worst["params"] = max(float(jnp.abs(p1[k] - pn[k]).max()) for k in p1)
    worst["indices_equal"] = all(bool(np.array_equal(s1.layers[k].indices, sn.layers[k].indices))
                                 for k in ("up", "down"))
    worst["refreshes"] = int(sn.layers["up"].refresh_count)
    print(json.dumps(worst))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
