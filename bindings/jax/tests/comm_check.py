"""What a data-parallel step hands to the collectives, per layer: GRASS (replicated and sharded
state) against a dense all-reduce, and at a refresh for each way of combining scores; and how
close each score combination's selection is to the exact one.

Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=4; prints one JSON line.
The bytes are counted from the traced step (the jaxpr inside shard_map): every operand handed
to psum (all-reduce), reduce_scatter, all_gather, pmax / pmin, times the trip count of the
scans around it. test_distributed.py checks them; the README's table is this output.
"""

import json
import sys

import jax
import jax.extend  # noqa: F401  (ClosedJaxpr, Jaxpr, Literal)
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

import grass_jax as gj
from grass_jax import ops
from grass_jax.linear import LayerConfig, layer_scores, select_rows

N_DEV = 4
# Sizes chosen so that no two tensors of different layers share a shape (the count tells them
# apart by shape): up projects its 384 columns, down its 256 rows.
IN, HIDDEN, OUT, RANK, BATCH = 384, 256, 64, 32, 32   # BATCH: per device
LAYERS = {"up": (HIDDEN, IN), "down": (OUT, HIDDEN)}
MASK = {"up": True, "down": True, "out_scale": False}
CHUNK_ELEMS = 1 << 13   # dp_chunk_elems: exact scores are all-reduced 8192 elements at a time
COLLECTIVES = ("psum", "psum_invariant", "reduce_scatter", "all_gather", "all_gather_invariant",
               "pmax", "pmin", "all_to_all", "ppermute")


def init_params(key):
    k = jax.random.split(key, 3)
    return {"up": jax.random.normal(k[0], (HIDDEN, IN)) / np.sqrt(IN),
            "down": jax.random.normal(k[1], (OUT, HIDDEN)) / np.sqrt(HIDDEN),
            "out_scale": jnp.ones((OUT,))}


def batch(key, size):
    kx, kt = jax.random.split(key)
    x = jax.random.normal(kx, (size, IN))
    teacher = jax.random.normal(jax.random.PRNGKey(7), (IN, OUT)) / np.sqrt(IN)
    return x, jnp.tanh(x @ teacher) + 0.3 * jax.random.normal(kt, (size, OUT))


def loss_fn(params, proj, x, y):
    if proj is None:
        out = jax.nn.gelu(x @ params["up"].T) @ params["down"].T
    else:
        h = jax.nn.gelu(gj.grass_linear(x, params["up"], proj["up"]))
        out = gj.grass_linear(h, params["down"], proj["down"])
    return jnp.mean((out * params["out_scale"] - y) ** 2)


def _sub_jaxprs(value):
    for item in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(item, jax.extend.core.ClosedJaxpr):
            yield item.jaxpr
        elif isinstance(item, jax.extend.core.Jaxpr):
            yield item


def collectives(jaxpr, times=1):
    """(primitive, shape, dtype, times executed) for each array operand handed to a collective
    in `jaxpr` and the jaxprs inside it; a scan's body counts `length` times."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in COLLECTIVES:
            for v in eqn.invars:
                if isinstance(v, jax.extend.core.Literal):
                    continue  # a constant (e.g. psum(1) for the axis size): not on the wire
                yield name, tuple(v.aval.shape), jnp.dtype(v.aval.dtype), times
        inner = times * int(eqn.params["length"]) if name == "scan" else times
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                yield from collectives(sub, inner)


def ring_bytes(name, nbytes, n_dev):
    """Bytes one device sends for one collective over n_dev devices with ring algorithms:
    all-reduce 2(N-1)/N of its operand, reduce-scatter and all-gather (N-1)/N of the whole
    (the reduce-scatter's operand, the all-gather's result = N x its operand)."""
    if name in ("psum", "psum_invariant", "pmax", "pmin"):
        return 2 * (n_dev - 1) / n_dev * nbytes
    if name == "reduce_scatter":
        return (n_dev - 1) / n_dev * nbytes
    if name in ("all_gather", "all_gather_invariant"):
        return (n_dev - 1) * nbytes
    raise ValueError(name)


def account(step, args, shapes_of):
    """{layer or "other": {"handed": bytes, "ring": bytes, "ops": [...]}} for one step."""
    args = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
    jaxpr = jax.make_jaxpr(jax.jit(step))(*args).jaxpr
    out = {}
    for name, shape, dtype, times in collectives(jaxpr):
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize * times
        who = shapes_of.get(shape, "other")
        e = out.setdefault(who, {"handed": 0, "ring": 0.0, "ops": []})
        e["handed"] += nbytes
        e["ring"] += ring_bytes(name, nbytes, N_DEV)
        e["ops"].append(f"{name} {dtype.name}{list(shape)} x{times}")
    return out


def grass_step(opt, refresh):
    def local(params, state, x, y):
        proj = opt.projections(params, state, refresh=refresh)
        loss, grads = opt.value_and_grad(loss_fn)(params, proj, x, y)
        params, state = opt.step(params, grads, state)
        return params, state, lax.pmean(loss, "data")
    return local


def dense_step(params, x, y):
    """Plain data parallel: the full gradient of every weight all-reduced."""
    loss, grads = jax.value_and_grad(loss_fn)(params, None, x, y)
    grads = lax.pmean(grads, "data")
    return jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, params, grads), loss


def traffic():
    mesh = make_mesh()
    params = init_params(jax.random.PRNGKey(0))
    x, y = batch(jax.random.PRNGKey(1), BATCH * N_DEV)
    shapes_of = {}
    for name, (m, n) in LAYERS.items():
        side, d, k = ops.resolve_side(m, n)
        per = RANK // N_DEV
        shapes_of[(m, n)] = name                   # a full weight gradient
        shapes_of[(RANK, k)] = name                # compressed gradient
        shapes_of[(per, k) if side == "rows" else (k, per)] = name  # a device's updated rows
        shapes_of[(max(1, min(d, CHUNK_ELEMS // k)), k)] = name     # a chunk of exact scores
        shapes_of[(d,)] = name                     # row scores (sum_sq)
    report = {}
    dense = jax.shard_map(dense_step, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                          out_specs=(P(), P()), check_vma=False)
    report["dense"] = account(dense, (params, x, y), shapes_of)
    for label, kw in (("grass", {}), ("grass_sharded", {"shard_state": True}),
                      ("grass_sum_sq", {"dp_scores": "sum_sq"})):
        opt = gj.grass_adamw(1e-3, grass_mask=MASK, rank=RANK, axis_name="data",
                             dp_chunk_elems=CHUNK_ELEMS, **kw)
        state = jax.eval_shape(opt.init, params)
        specs = opt.state_specs(state)
        for refresh in (False, True):
            if label == "grass_sum_sq" and not refresh:
                continue  # the plain step does not combine scores
            step = jax.shard_map(grass_step(opt, refresh), mesh=mesh,
                                 in_specs=(P(), specs, P("data"), P("data")),
                                 out_specs=(P(), specs, P()), check_vma=False)
            report[f"{label}_{'refresh' if refresh else 'plain'}"] = account(
                step, (params, state, x, y), shapes_of)
    return report


def make_mesh():
    # Auto axes: the traced arguments carry no sharding of their own
    return jax.make_mesh((N_DEV,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def overlap(a, b):
    """Fraction of the rows of selection a that selection b holds too."""
    return len(set(np.asarray(a).tolist()) & set(np.asarray(b).tolist())) / len(a)


def selection_quality(trials=10):
    """For each layer, method and score combination: the mean overlap of the rows selected
    from the combined scores with the rows selected from the exact scores of the full batch
    (the mean gradient's row norms), over `trials` batches at a fixed point. For the sampling
    method, "redraw" is the overlap of two draws from the exact scores (another refresh
    index): what sampling alone changes."""
    mesh = make_mesh()
    params = init_params(jax.random.PRNGKey(0))
    result = {}
    for name, (m, n) in LAYERS.items():
        acts = jax.jit(lambda p, x, y, name=name: _activations(p, x, y, name))
        combined = {}
        for mode in ("exact", "sum_sq"):
            cfg = LayerConfig.make(m, n, RANK, axis_name="data", dp_scores=mode,
                                   dp_chunk_elems=CHUNK_ELEMS)
            combined[mode] = jax.jit(jax.shard_map(
                lambda a, dy, cfg=cfg: layer_scores(cfg, a, dy), mesh=mesh,
                in_specs=(P("data"), P("data")), out_specs=P(), check_vma=False))
        one = LayerConfig.make(m, n, RANK)
        ov = {}
        for t in range(trials):
            x, y = batch(jax.random.PRNGKey(100 + t), BATCH * N_DEV)
            a, dy = acts(params, x, y)
            exact = ops.row_scores(a, dy, one.side)
            scores = {mode: f(a, dy) for mode, f in combined.items()}
            for method in ("top_r", "multinomial_nr"):
                cfg = LayerConfig.make(m, n, RANK, method=method)
                want, _ = select_rows(cfg, exact, jnp.uint32(t))
                for mode, s in scores.items():
                    got, _ = select_rows(cfg, s, jnp.uint32(t))
                    ov.setdefault(f"{name}_{method}_{mode}", []).append(overlap(want, got))
                if method != "top_r":
                    other, _ = select_rows(cfg, exact, jnp.uint32(t + 1000))
                    ov.setdefault(f"{name}_{method}_redraw", []).append(overlap(want, other))
        result.update({k: float(np.mean(v)) for k, v in ov.items()})
    return result


def _activations(params, x, y, name):
    """The input a (b, n) and output gradient dy (b, m) of layer `name` on the full batch,
    each device's rows scaled as in its own mean loss (so that the mean over devices of the
    per-device gradients is the full batch's gradient)."""
    h_pre = x @ params["up"].T
    h = jax.nn.gelu(h_pre)
    out = h @ params["down"].T
    # d(mean over one device's rows)/d out
    d_out = 2.0 * (out * params["out_scale"] - y) * params["out_scale"] / (BATCH * OUT)
    if name == "down":
        return h, d_out
    dh = d_out @ params["down"]
    return x, dh * jax.vmap(jax.vmap(jax.grad(jax.nn.gelu)))(h_pre)


if __name__ == "__main__":
    assert jax.device_count() == N_DEV, jax.devices()
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    out = {}
    if what in ("all", "traffic"):
        out["traffic"] = traffic()
    if what in ("all", "quality"):
        out["quality"] = selection_quality()
    print(json.dumps(out))
