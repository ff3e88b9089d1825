"""Data-parallel GRASS training across processes, with and without optimizer-state sharding.

    dist_check.py train OUT.npz SHARD REFRESH_MODE METHOD [PROCESS_ID PROCESSES PORT [SEED]]

trains the test model (model.py) for STEPS steps on a global mesh of every device of every
process and writes (process 0) the final weights, the selection, the state and the losses to
OUT.npz. With PROCESS_ID / PROCESSES / PORT it first joins a jax.distributed run with its
coordinator on 127.0.0.1:PORT (CPU collectives through gloo); the devices per process come
from XLA_FLAGS=--xla_force_host_platform_device_count. test_distributed.py runs it.
"""

import json
import sys

import jax

if len(sys.argv) > 6:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[8]}",
                               num_processes=int(sys.argv[7]), process_id=int(sys.argv[6]),
                               initialization_timeout=60)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import grass_jax as gj  # noqa: E402
import model  # noqa: E402

STEPS, RANK, REFRESH_EVERY, BATCH_PER_DEVICE = 7, 8, 3, 8


def is_spec(x):
    return isinstance(x, P)


def global_array(x, sharding):
    """A global array from a value every process holds whole."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def whole(x):
    """The full value of a global array, on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def make_optimizer(shard, refresh_mode, method, seed=0):
    return gj.grass_adamw(5e-3, grass_mask=model.GRASS_MASK, rank=RANK,
                          refresh_every=REFRESH_EVERY, method=method, refresh_mode=refresh_mode,
                          seed=seed, weight_decay=0.01, axis_name="data", shard_state=shard)


def make_step(opt, state_specs, mesh):
    def local(params, state, ids, target):
        proj = opt.projections(params, state)
        loss, grads = opt.value_and_grad(model.loss_fn)(params, proj, ids, target)
        params, state = opt.step(params, grads, state)
        return params, state, jax.lax.pmean(loss, "data")

    return jax.jit(jax.shard_map(local, mesh=mesh,
                                 in_specs=(P(), state_specs, P("data"), P("data")),
                                 out_specs=(P(), state_specs, P()), check_vma=False),
                   donate_argnums=(0, 1))


def sum_order(mesh):
    """psum over the axis of 4096 values per device of mixed magnitudes: f32 addition is not
    associative, so the sums' last bits tell the order in which the devices were added."""
    rng = np.random.default_rng(5)
    n_dev = jax.device_count()
    values = (rng.standard_normal((n_dev, 4096)) * 10.0 ** rng.uniform(-3, 3, (n_dev, 4096)))
    total = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v[0], "data"), mesh=mesh,
                                  in_specs=P("data"), out_specs=P(), check_vma=False))
    return whole(total(global_array(values.astype(np.float32),
                                    NamedSharding(mesh, P("data")))))


def train(out, shard, refresh_mode, method, seed=0):
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    opt = make_optimizer(shard, refresh_mode, method, seed)
    params0 = model.init_params(jax.random.PRNGKey(0))
    specs = opt.state_specs(jax.eval_shape(opt.init, params0))
    shardings = jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs, is_leaf=is_spec)
    opt.check_processes(params0)  # init runs under jit below, where it cannot check
    params = jax.tree_util.tree_map(lambda p: global_array(p, NamedSharding(mesh, P())), params0)
    state = jax.jit(opt.init, out_shardings=shardings)(params)
    step = make_step(opt, specs, mesh)
    split = NamedSharding(mesh, P("data"))
    losses = []
    for i in range(STEPS):
        ids, target = model.batch(jax.random.PRNGKey(100 + i), BATCH_PER_DEVICE *
                                  jax.device_count())
        if opt.refresh_due_host(i):
            opt.check_processes(params0, state)
        params, state, loss = step(params, state, global_array(ids, split),
                                   global_array(target, split))
        losses.append(float(whole(loss)))
    result = {"loss": np.asarray(losses, np.float32), "sum_order": sum_order(mesh)}
    for name, w in params.items():
        result[f"w_{name}"] = whole(w)
    for name in ("up", "down"):
        ls = state.layers[name]
        for field in ("indices", "scales", "m", "v", "row_steps", "refresh_count", "skipped"):
            result[f"{field}_{name}"] = whole(getattr(ls, field))
        # what each device of this process holds of the layer's optimizer state
        result[f"state_bytes_{name}"] = np.asarray(
            [sum(s.data.nbytes for s in a.addressable_shards if s.device == d)
             for d in jax.local_devices() for a in (ls.m, ls.v, ls.row_steps)]
        ).reshape(len(jax.local_devices()), 3).sum(axis=1)
    if jax.process_index() == 0:
        np.savez(out, **result)
    print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(),
                      "loss": losses}))


def nonfinite():
    """The sharded step where only the last device's share of g is not finite: every device
    must skip (as the unsharded op skips for the whole g), leaving W, M, V and the counts."""
    n_dev = jax.device_count()
    mesh = jax.make_mesh((n_dev,), ("data",))
    m, n, r = 40, 24, 4 * n_dev
    k = jax.random.split(jax.random.PRNGKey(3), 5)
    w = jax.random.normal(k[0], (m, n))
    indices = jnp.sort(jax.random.choice(k[1], m, (r,), replace=False)).astype(jnp.int32)
    scales = jnp.ones((r,), jnp.float32)
    mv = jax.random.normal(k[2], (2, r, n)) ** 2 * 1e-3
    steps = jnp.full((r,), 3, jnp.int32)
    g = jax.random.normal(k[3], (n_dev, r, n))   # each device's own compressed gradient
    bad = g.at[0, r - 1, 0].set(jnp.nan)         # a row of the last device's share
    adam = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decay_mode="selected")

    def sharded(w, m_state, v_state, row_steps, g):
        w, m_state, v_state, row_steps, skipped = gj.sharding.sparse_adamw_step(
            w, indices, scales, g[0], m_state, v_state, row_steps, 1e-2, axis_name="data",
            side="rows", rank=r, alpha=1.0, adam=adam)
        return w, m_state, v_state, row_steps, skipped[None]  # each device's outcome

    run = jax.jit(jax.shard_map(
        sharded, mesh=mesh, in_specs=(P(), P("data"), P("data"), P("data"), P("data")),
        out_specs=(P(), P("data"), P("data"), P("data"), P("data")), check_vma=False))
    put = lambda x, spec: global_array(x, NamedSharding(mesh, spec))
    args = (put(w, P()), put(mv[0], P("data")), put(mv[1], P("data")), put(steps, P("data")))
    res = {}
    for name, grads in (("finite", g), ("nonfinite", bad)):
        w2, m2, v2, s2, skipped = run(*args, put(grads, P("data")))
        want = gj.ops.sparse_adamw_step(w, indices, scales, grads.mean(axis=0), mv[0], mv[1],
                                        steps, 1e-2, side="rows", **adam)
        res[name] = {"skipped": whole(skipped).tolist(), "want_skipped": int(want[4]),
                     "w_max_diff": float(np.abs(whole(w2) - np.asarray(want[0])).max()),
                     "m_max_diff": float(np.abs(whole(m2) - np.asarray(want[1])).max()),
                     "v_max_diff": float(np.abs(whole(v2) - np.asarray(want[2])).max()),
                     "steps": whole(s2).tolist(), "w_changed": bool((whole(w2) != w).any())}
    # a rank that does not split into the devices' shares is refused when traced
    odd = jax.shard_map(
        lambda w, m_state, v_state, row_steps, g: gj.sharding.sparse_adamw_step(
            w, indices[:6], scales[:6], g[0][:6], m_state, v_state, row_steps, 1e-2,
            axis_name="data", side="rows", rank=6, alpha=1.0, adam=adam)[0],
        mesh=mesh, in_specs=(P(), P("data"), P("data"), P("data"), P("data")), out_specs=P(),
        check_vma=False)
    try:
        jax.jit(odd).lower(*args, put(g, P("data")))
        res["odd_rank_error"] = None
    except ValueError as e:
        res["odd_rank_error"] = str(e)
    print(json.dumps(res))


def memory():
    """The compiled sharded step (no refresh) for a 4096 x 1024 weight: which instructions make
    an m x n array, and XLA's scratch. The all-gathered rows must be scattered into the donated
    W in place, not into a copy."""
    import re

    m, n, b, r = 4096, 1024, 64, 32  # side "rows": r of the 4096 rows, k = 1024
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    params = {"w": jax.ShapeDtypeStruct((m, n), jnp.float32)}
    res = {}
    for shard in (False, True):
        opt = gj.grass_adamw(1e-3, grass_mask={"w": True}, rank=r, refresh_every=100,
                             side="rows", axis_name="data", shard_state=shard)
        state = jax.eval_shape(opt.init, params)
        specs = opt.state_specs(state)

        def loss_fn(p, proj, x):
            return jnp.mean(jnp.tanh(gj.grass_linear(x, p["w"], proj["w"])) ** 2)

        def local(p, s, x, opt=opt):
            proj = opt.projections(p, s, refresh=False)
            loss, grads = opt.value_and_grad(loss_fn)(p, proj, x)
            p, s = opt.step(p, grads, s)
            return p, s, loss

        step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), specs, P("data")),
                                     out_specs=(P(), specs, P()), check_vma=False),
                       donate_argnums=(0, 1))
        x = jax.ShapeDtypeStruct((b * jax.device_count(), n), jnp.float32)
        compiled = step.lower(params, state, x).compile()
        hlo = compiled.as_text()
        made = re.compile(r"=\s*f32\[%d,%d\]\{[^}]*\}\s+([\w-]+)\(" % (m, n))
        res["sharded" if shard else "replicated"] = {
            "mn_producers": sorted({k.group(1) for line in hlo.splitlines()
                                    if (k := made.search(line))}),
            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
            "mn_bytes": m * n * 4}
    print(json.dumps(res))


if __name__ == "__main__":
    if sys.argv[1] == "train":
        seed = int(sys.argv[9]) if len(sys.argv) > 9 else 0
        train(sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5], seed)
    elif sys.argv[1] == "nonfinite":
        nonfinite()
    elif sys.argv[1] == "memory":
        memory()
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
