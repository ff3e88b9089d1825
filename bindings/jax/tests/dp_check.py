"""Data-parallel training on N CPU devices against one device on the concatenated batch.

Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=N (test_data_parallel.py
does); prints one JSON line with the largest differences."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import grass_jax as gj
import model


def main(n_dev, steps, dp_scores, method, refresh_mode):
    assert jax.device_count() == n_dev, jax.devices()
    mesh = jax.make_mesh((n_dev,), ("data",))
    kw = dict(grass_mask=model.GRASS_MASK, rank=6, refresh_every=3, method=method,
              refresh_mode=refresh_mode)
    one = gj.grass_adamw(5e-3, **kw)
    # Small score chunks (several per layer, the last one padded), so that an m x n
    # all-reduce in the HLO can only be a full weight gradient.
    many = gj.grass_adamw(5e-3, axis_name="data", dp_scores=dp_scores, dp_chunk_elems=110, **kw)

    step_one = model.make_step(one, donate=False)

    def local(params, state, ids, target):
        proj = many.projections(params, state)
        loss, grads = many.value_and_grad(model.loss_fn)(params, proj, ids, target)
        params, state = many.step(params, grads, state)
        # every device's copy of the replicated per-layer state, to check that they agree
        up = state.layers["up"]
        return params, state, jax.lax.pmean(loss, "data"), jnp.concatenate(
            [up.indices, up.row_steps, up.refresh_count[None].astype(jnp.int32)])[None]

    step_many = jax.jit(jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
        out_specs=(P(), P(), P(), P("data")), check_vma=False))

    replicated = jax.sharding.NamedSharding(mesh, P())
    split = jax.sharding.NamedSharding(mesh, P("data"))
    params = model.init_params(jax.random.PRNGKey(0))
    p1, s1 = params, one.init(params)
    pn, sn = jax.device_put((params, many.init(params)), replicated)
    worst = {"loss": 0.0, "params": 0.0, "indices_equal": True, "row_steps_equal": True,
             "replicas_agree": True, "refreshes": 0}
    for i in range(steps):
        ids, target = model.batch(jax.random.PRNGKey(i), 16 * n_dev)
        p1, s1, l1 = step_one(p1, s1, ids, target)
        pn, sn, ln, per_dev = step_many(pn, sn, *jax.device_put((ids, target), split))
        worst["loss"] = max(worst["loss"], abs(float(l1) - float(ln)) / abs(float(l1)))
        for name in p1:
            diff = float(jnp.abs(p1[name] - pn[name]).max())
            worst["params"] = max(worst["params"], diff)
        for name in ("up", "down"):
            worst["indices_equal"] &= bool(
                (s1.layers[name].indices == sn.layers[name].indices).all())
            worst["row_steps_equal"] &= bool(
                (s1.layers[name].row_steps == sn.layers[name].row_steps).all())
        per_dev = np.asarray(per_dev)
        worst["replicas_agree"] &= bool((per_dev == per_dev[0]).all())
    worst["refreshes"] = int(sn.layers["up"].refresh_count)
    worst["row_steps"] = np.asarray(sn.layers["up"].row_steps).tolist()
    hlo = step_many.lower(pn, sn, *jax.device_put((ids, target), split)).compile().as_text()
    shapes = [f"f32[{m},{n}]" for m, n in (params["up"].shape, params["down"].shape)]
    worst["full_gradient_all_reduce"] = any(
        "all-reduce(" in line and any(s in line.split("all-reduce(")[0] for s in shapes)
        for line in hlo.splitlines())
    worst["all_reduce_count"] = hlo.count("all-reduce(")
    print(json.dumps(worst))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
