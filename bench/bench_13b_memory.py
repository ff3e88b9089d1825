"""Trains a LLaMA-13B-shaped bf16 model for a few steps with GRASS in JAX and reads the device's
peak memory; compiles the same step with optax.adamw and reads XLA's memory analysis of it;
prints both beside libgrass's memory plan of the model.

Model: 40 blocks (hidden 5120, 40 heads, SwiGLU MLP 13824), vocabulary 32000, bf16 weights,
every block under jax.checkpoint (its activations are recomputed in the backward pass), blocks
unrolled in Python (grass_jax's weights are 2-D). The attention and MLP matrices (7 per block)
are trained with GRASS (state f32, rank --rank); the embedding, output head and norm gains
with grass's dense AdamW (state f32). optax.adamw's step is only compiled, never run: its
memory analysis (arguments + outputs - aliased + temporaries) is what it would need.

Pass: the measured peak is at most --limit-gb (40) and the AdamW step needs more than that.
On a CPU, --small runs a scaled-down model end to end (the peak is then not reported by the
backend; the compiled analyses and the plan still are).

Usage: python3 bench/bench_13b_memory.py [--small] [--steps N] [--rank R] [--batch B --seq T]
Writes $OUT/memory_13b.json and $OUT/memory_13b.md when OUT is set.
"""
import argparse
import functools
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

import grass_jax as gj
from grass_jax import memory as gmem

DTYPE = jnp.bfloat16
GRASS_NAMES = ("q", "k", "v", "o", "gate", "up", "down")
GB = 1e9


def shapes(a):
    """(m, n) of each weight of one block."""
    h, f = a.hidden, a.mlp
    return {"attn_norm": (h,), "q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h),
            "mlp_norm": (h,), "gate": (f, h), "up": (f, h), "down": (h, f)}


def abstract_params(a):
    sd = lambda s: jax.ShapeDtypeStruct(s, DTYPE)  # noqa: E731
    return {"embed": sd((a.vocab, a.hidden)), "head": sd((a.vocab, a.hidden)),
            "norm": sd((a.hidden,)),
            "blocks": [{k: sd(s) for k, s in shapes(a).items()} for _ in range(a.layers)]}


@functools.partial(jax.jit, static_argnums=1)
def _normal(key, shape, scale):
    return (jax.random.normal(key, shape, jnp.float32) * scale).astype(DTYPE)


def init_params(a, key):
    """Weights made on the device one tensor at a time (never an f32 copy of the model)."""
    keys = iter(jax.random.split(key, 2 + 9 * a.layers))
    out = {"embed": _normal(next(keys), (a.vocab, a.hidden), 0.02),
           "head": _normal(next(keys), (a.vocab, a.hidden), 0.02),
           "norm": jnp.ones((a.hidden,), DTYPE), "blocks": []}
    for _ in range(a.layers):
        blk = {}
        for name, s in shapes(a).items():
            key = next(keys)
            blk[name] = jnp.ones(s, DTYPE) if len(s) == 1 else _normal(key, s, 1.0 / math.sqrt(s[-1]))
        out["blocks"].append(blk)
    return out


def rms_norm(x, g):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
    return (y * g.astype(jnp.float32)).astype(DTYPE)


def make_block(a, linear):
    """One LLaMA block; `linear(x, p, proj, name)` applies weight `name`."""
    heads, hd = a.heads, a.hidden // a.heads

    def block(x, p, proj):
        bsz, t, h = x.shape
        y = rms_norm(x, p["attn_norm"])
        q, k, v = (linear(y, p, proj, n).reshape(bsz, t, heads, hd) for n in ("q", "k", "v"))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(hd)
        causal = jnp.tril(jnp.ones((t, t), bool))
        s = jnp.where(causal, s, -1e30)
        att = jax.nn.softmax(s, axis=-1).astype(DTYPE)
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(bsz, t, h)
        x = x + linear(o, p, proj, "o")
        y = rms_norm(x, p["mlp_norm"])
        gate, up = linear(y, p, proj, "gate"), linear(y, p, proj, "up")
        z = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(DTYPE)
        return x + linear(z, p, proj, "down")

    return jax.checkpoint(block)


def loss_of(a, linear):
    block = make_block(a, linear)

    def loss(params, proj, tokens):
        x = jnp.take(params["embed"], tokens[:, :-1], axis=0)
        for i, p in enumerate(params["blocks"]):
            x = block(x, p, None if proj is None else proj["blocks"][i])
        x = rms_norm(x, params["norm"])
        logits = (x @ params["head"].T).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    return loss


def grass_linear(x, p, proj, name):
    return gj.grass_linear(x, p[name], proj[name])


def dense_linear(x, p, proj, name):
    return x @ p[name].T


def is_grass(path, leaf):
    return getattr(path[-1], "key", None) in GRASS_NAMES


def grass_step(a):
    opt = gj.grass_adamw(1e-4, grass_mask=is_grass, rank=a.rank, refresh_every=200)
    loss = loss_of(a, grass_linear)

    def step(params, state, tokens):
        proj = opt.projections(params, state)
        value, grads = opt.value_and_grad(loss)(params, proj, tokens)
        params, state = opt.step(params, grads, state)
        return params, state, value

    return opt, jax.jit(step, donate_argnums=(0, 1))


def adamw_step(a):
    tx = optax.adamw(1e-4)
    loss = loss_of(a, dense_linear)

    def step(params, state, tokens):
        value, g = jax.value_and_grad(lambda p, t: loss(p, None, t))(params, tokens)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state, value

    return tx, jax.jit(step, donate_argnums=(0, 1))


def footprint(compiled):
    m = compiled.memory_analysis()
    return {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
            "alias_bytes": m.alias_size_in_bytes, "temp_bytes": m.temp_size_in_bytes,
            "footprint_bytes": m.argument_size_in_bytes + m.output_size_in_bytes
            - m.alias_size_in_bytes + m.temp_size_in_bytes}


def plan_model(a):
    model = gmem.llama(a.layers, a.hidden, a.mlp, a.vocab, rank=a.rank)
    model["max_tokens"] = a.batch * (a.seq - 1)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=5120)
    ap.add_argument("--mlp", type=int, default=13824)
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rank", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=513, help="tokens per sequence (+1 for targets)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--limit-gb", type=float, default=40.0)
    ap.add_argument("--small", action="store_true",
                    help="2 blocks, hidden 256, MLP 688, 4 heads, vocab 1000, r 32, 2 x 64 tokens")
    a = ap.parse_args()
    if a.small:
        a.layers, a.hidden, a.mlp, a.heads, a.vocab = 2, 256, 688, 4, 1000
        a.rank, a.batch, a.seq = 32, 2, 65
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    res = {"device": f"{dev.platform}: {dev.device_kind}", "jax": jax.__version__,
           "model": {k: getattr(a, k) for k in ("layers", "hidden", "mlp", "heads", "vocab", "rank",
                                                "batch", "seq", "steps")}}
    print(f"{res['device']}, jax {jax.__version__}, grass {gj.version()}", flush=True)

    t0 = time.time()
    where = "cuda" if on_gpu else "cpu"
    try:
        res["plan"] = gmem.plan(plan_model(a), device=where)
    except gj.GrassError as e:  # the plan on a CPU context differs only in its workspace
        print(f"no CUDA context for the plan ({e}); planning on a CPU context", flush=True)
        where = "cpu"
        res["plan"] = gmem.plan(plan_model(a), device=where)
    res["plan_context"] = where
    print(f"plan of the model ({where} context), GiB:\n{gmem.table(res['plan'])}", flush=True)

    # AdamW first, on abstract values: nothing of it is ever allocated.
    tx, astep = adamw_step(a)
    shapes_p = abstract_params(a)
    tokens_sd = jax.ShapeDtypeStruct((a.batch, a.seq), jnp.int32)
    res["adamw"] = footprint(astep.lower(shapes_p, jax.eval_shape(tx.init, shapes_p), tokens_sd).compile())
    print(f"optax.adamw step compiled in {time.time() - t0:.0f} s: "
          f"{res['adamw']['footprint_bytes'] / GB:.2f} GB by XLA's memory analysis", flush=True)

    t0 = time.time()
    params = init_params(a, jax.random.PRNGKey(0))
    opt, gstep = grass_step(a)
    state = opt.init(params)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (a.batch, a.seq), 0, a.vocab, jnp.int32)
    compiled = gstep.lower(params, state, tokens).compile()
    res["grass"] = footprint(compiled)
    print(f"GRASS step compiled in {time.time() - t0:.0f} s: "
          f"{res['grass']['footprint_bytes'] / GB:.2f} GB by XLA's memory analysis", flush=True)
    losses, times = [], []
    for _ in range(a.steps):
        t1 = time.time()
        params, state, value = compiled(params, state, tokens)
        losses.append(float(value))
        times.append(time.time() - t1)
    stats = dev.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    res["grass"].update(losses=losses, step_seconds=times, peak_bytes=peak,
                        bytes_limit=stats.get("bytes_limit"))
    print(f"GRASS losses {['%.4f' % v for v in losses]}, step times "
          f"{['%.2f s' % v for v in times]}", flush=True)

    p, g, ad = res["plan"], res["grass"], res["adamw"]
    fmt = lambda v: "n/a" if v is None else f"{v / GB:.3g}"  # noqa: E731
    m = res["model"]
    rows = [
        f"{res['device']}, jax {res['jax']}; LLaMA-shaped {m['layers']} blocks, hidden {m['hidden']}, "
        f"MLP {m['mlp']}, {m['heads']} heads, vocab {m['vocab']}, bf16, r = {m['rank']}, "
        f"{m['batch']} x {m['seq'] - 1} tokens, jax.checkpoint per block", "",
        "| | plan total GB | XLA analysis GB | measured peak GB |", "| --- | --- | --- | --- |",
        f"| GRASS (grass_jax) | {fmt(p['grass_total_bytes'])} | {fmt(g['footprint_bytes'])} | {fmt(peak)} |",
        f"| optax.adamw | {fmt(p['adamw_total_bytes'])} | {fmt(ad['footprint_bytes'])} | not run |",
        f"| GaLore (plan only) | {fmt(p['galore_total_bytes'])} | | |", "",
        f"Plan (without activations): weights {fmt(p['weight_bytes'])} GB, GRASS states "
        f"{fmt(p['grass_state_bytes'])} GB, gradients {fmt(p['grass_gradient_bytes'])} GB, "
        f"selection {fmt(p['grass_selection_bytes'])} GB, workspace {fmt(p['grass_workspace_bytes'])} GB.",
    ]
    table = "\n".join(rows)
    print(table)
    print(json.dumps(res))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "memory_13b.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(os.environ["OUT"], "memory_13b.md"), "w") as f:
            f.write(table + "\n")
    limit = a.limit_gb * GB
    bad = []
    if not all(math.isfinite(v) for v in losses):
        bad.append("a loss is not finite")
    if peak is not None and peak > limit:
        bad.append(f"the GRASS peak {peak / GB:.2f} GB exceeds {a.limit_gb} GB")
    if not a.small and ad["footprint_bytes"] <= limit:
        bad.append(f"optax.adamw's step needs only {ad['footprint_bytes'] / GB:.2f} GB")
    if ad["footprint_bytes"] <= g["footprint_bytes"]:
        bad.append("optax.adamw's compiled step is not larger than GRASS's")
    if on_gpu and peak is None:
        bad.append("the GPU reported no peak memory")
    for b in bad:
        print(f"FAIL: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
