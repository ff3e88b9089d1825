"""Trains a LLaMA-13B-shaped bf16 model for a few steps with GRASS in JAX and reads the device's
peak memory; compiles the same step with optax.adamw and reads XLA's memory analysis of it;
prints both beside libgrass's memory plan of the model.

Model: 40 blocks (hidden 5120, 40 heads, SwiGLU MLP 13824), vocabulary 32000, bf16 weights.
Each block weight is stacked over the layers, (40, m, n), and the blocks run under lax.scan
with the block under jax.checkpoint (only each block's input is kept; its activations are
recomputed in the backward pass), so the step compiles one block whatever the depth. The
attention and MLP matrices (7 per block) are trained with GRASS (state f32, rank --rank); the
embedding, output head and norm gains with grass's dense AdamW (state f32). optax.adamw's step
(the same model and scan) is only compiled, never run: its memory analysis (arguments +
outputs - aliased + temporaries) is what it would need.

Pass: the measured peak is at most --limit-gb (40); the AdamW step needs more than that; the
compiled GRASS step makes no stacked (L, m, n) value of a GRASS weight but the weight itself
(no stacked gradient), its temporaries (less the CPU backend's f32 copies of the bf16 weights)
are below the stacked GRASS weights' bytes, and every
stacked GRASS weight is updated in place (its parameter aliases its output). On a CPU,
--small runs a scaled-down model end to end (the peak is then not reported by the backend;
the compiled analyses, the HLO checks and the plan still are).

Usage: python3 bench/bench_13b_memory.py [--small] [--steps N] [--rank R]
       [--batch B --seq T] [--layers L --hidden H --mlp F --heads A --vocab V]
Writes $OUT/memory_13b.json and $OUT/memory_13b.md when OUT is set.
"""
import argparse
import functools
import json
import math
import os
import re
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
            "blocks": {k: sd((a.layers,) + s) for k, s in shapes(a).items()}}


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal(key, shape, scale):
    return (jax.random.normal(key, shape, jnp.float32) * scale).astype(DTYPE)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal_stack(keys, shape, scale):
    # one layer at a time (lax.map): the f32 draw is one slice, never the whole stack
    return jax.lax.map(lambda k: _normal(k, shape, scale), keys)


def init_params(a, key):
    """Weights made on the device one stacked tensor at a time (never an f32 copy of one)."""
    keys = iter(jax.random.split(key, 2 + len(shapes(a))))
    out = {"embed": _normal(next(keys), (a.vocab, a.hidden), 0.02),
           "head": _normal(next(keys), (a.vocab, a.hidden), 0.02),
           "norm": jnp.ones((a.hidden,), DTYPE), "blocks": {}}
    for name, s in shapes(a).items():
        key = next(keys)
        out["blocks"][name] = (jnp.ones((a.layers,) + s, DTYPE) if len(s) == 1 else
                               _normal_stack(jax.random.split(key, a.layers), s,
                                             1.0 / math.sqrt(s[-1])))
    return out


def rms_norm(x, g):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
    return (y * g.astype(jnp.float32)).astype(DTYPE)


def make_block(a, linear):
    """One LLaMA block; `linear(x, p, proj, name)` applies weight `name` (one layer's slice)."""
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
        blocks = params["blocks"]
        pb = None if proj is None else proj["blocks"]
        x, _ = jax.lax.scan(lambda x, xs: (block(x, *xs), None), x, (blocks, pb))
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
    # the GRASS weights are the blocks' (layers, m, n) stacks
    opt = gj.grass_adamw(1e-4, grass_mask=is_grass, rank=a.rank, refresh_every=200, stacked=1)
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


# Ops that pass a stacked weight along without making a new value of it.
PASS_ALONG = {"parameter", "get-tuple-element", "tuple", "bitcast", "while", "conditional",
              "opt-barrier"}


def stacked_checks(compiled, a):
    """What the compiled GRASS step does with the stacked GRASS weights (L, m, n):

    made: instructions that make a new (L, m, n) value other than a convert of the weight
      itself (a stacked gradient would be one: a dot, a dynamic-update-slice of a scan's
      output, a broadcast of zeros, an add, a copy);
    weight_copy_bytes: converts of a stacked weight parameter to another dtype (XLA's CPU
      backend has no bf16 dynamic-slice: it converts each bf16 stack to f32 and slices that;
      a GPU makes none);
    not_in_place: stacked weights that do not go straight from their parameter into grass's
      step (operand 0 of grass_sparse_adamw_step, aliased to its output 0) and from it to the
      step's output aliased to that parameter."""
    hlo = compiled.as_text()
    entry = hlo[hlo.index("\nENTRY "):]
    entry = entry[:entry.index("\n}")]
    header = hlo[:hlo.index("\n")]
    aliased_params = {int(n) for n in re.findall(r"\((\d+), \{\}, (?:may|must)-alias\)", header)}
    stacked = {(a.layers,) + s for n, s in shapes(a).items() if n in GRASS_NAMES}
    dims = lambda t: tuple(int(d) for d in t.split(",") if d)  # noqa: E731
    params = {}  # name -> parameter number of each stacked GRASS weight
    for mm in re.finditer(r"%([\w.-]+) = \w+\[([\d,]*)\]\{[^}]*\} parameter\((\d+)\)", entry):
        if dims(mm.group(2)) in stacked:
            params[mm.group(1)] = int(mm.group(3))
    # Every value a fusion makes appears where the fusion is called: look at those, not into
    # the fused computations.
    fused = set(re.findall(r"\bfusion\([^\n]*?calls=%([\w.-]+)", hlo))
    made, copies, skip = [], 0, False
    value = re.compile(r"%([\w.-]+) = (\w+)\[([\d,]*)\]\{[^}]*\} ([\w-]+)\(([^)]*)\)")
    for line in hlo.splitlines():
        head = re.match(r"(?:ENTRY )?%([\w.-]+) \(", line)
        if head:
            skip = head.group(1) in fused
        mm = None if skip else value.search(line)
        if not mm or dims(mm.group(3)) not in stacked or mm.group(4) in PASS_ALONG:
            continue
        operands = [o.strip().lstrip("%") for o in mm.group(5).split(",")]
        convert = mm.group(4) == "convert" or (mm.group(4) == "fusion" and "calls=%wrapped_convert" in line)
        if convert and len(operands) == 1 and operands[0] in params:
            copies += math.prod(dims(mm.group(3))) * (4 if mm.group(2) == "f32" else 2)
        else:
            made.append(f"{mm.group(1)} = {mm.group(2)}[{mm.group(3)}] {mm.group(4)}")
    not_in_place = []
    for name, number in params.items():
        step = re.search(r"custom-call\(%" + re.escape(name) + r"[,)][^\n]*"
                         r"custom_call_target=\"grass_sparse_adamw_step\"[^\n]*"
                         r"output_to_operand_aliasing=\{\{0\}: \(0, \{\}\)", entry)
        if not step or number not in aliased_params:
            not_in_place.append(name)
    weight_bytes = sum(math.prod((a.layers,) + s) * 2 for n, s in shapes(a).items()
                       if n in GRASS_NAMES)
    return {"stacked_grass_weight_bytes": weight_bytes, "stacked_values_made": made,
            "weight_copy_bytes": copies, "not_in_place": sorted(not_in_place),
            "stacked_weights_found": len(params)}


def plan_model(a):
    model = gmem.llama(a.layers, a.hidden, a.mlp, a.vocab, rank=a.rank)
    model["max_tokens"] = a.batch * (a.seq - 1)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=None, help="40 (16 with --small)")
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
                    help="16 blocks (or --layers), hidden 256, MLP 688, 4 heads, vocab 1000, "
                    "r 32, 2 x 64 tokens")
    a = ap.parse_args()
    if a.small:
        a.hidden, a.mlp, a.heads, a.vocab = 256, 688, 4, 1000
        a.rank, a.batch, a.seq = 32, 2, 65
    if a.layers is None:
        a.layers = 16 if a.small else 40
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
    t0 = time.time()
    lowered = astep.lower(shapes_p, jax.eval_shape(tx.init, shapes_p), tokens_sd)
    t1 = time.time()
    acompiled = lowered.compile()
    res["adamw"] = footprint(acompiled)
    # the same checks must see optax's stacked gradients (else they could not fail)
    res["adamw"]["stacked_values_made"] = len(stacked_checks(acompiled, a)["stacked_values_made"])
    res["adamw"].update(trace_seconds=t1 - t0, compile_seconds=time.time() - t1)
    print(f"optax.adamw step traced in {t1 - t0:.1f} s, compiled in {time.time() - t1:.1f} s: "
          f"{res['adamw']['footprint_bytes'] / GB:.3g} GB by XLA's memory analysis", flush=True)

    t0 = time.time()
    params = init_params(a, jax.random.PRNGKey(0))
    opt, gstep = grass_step(a)
    state = opt.init(params)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (a.batch, a.seq), 0, a.vocab, jnp.int32)
    jax.block_until_ready((params, state))
    t1 = time.time()
    lowered = gstep.lower(params, state, tokens)
    t2 = time.time()
    compiled = lowered.compile()
    res["grass"] = footprint(compiled)
    res["grass"].update(init_seconds=t1 - t0, trace_seconds=t2 - t1, compile_seconds=time.time() - t2)
    print(f"GRASS model and state made in {t1 - t0:.1f} s, step traced in {t2 - t1:.1f} s, "
          f"compiled in {time.time() - t2:.1f} s: "
          f"{res['grass']['footprint_bytes'] / GB:.3g} GB by XLA's memory analysis", flush=True)
    chk = res["stacked"] = stacked_checks(compiled, a)
    print(f"stacked GRASS weights: {chk['stacked_weights_found']} found, "
          f"{chk['stacked_grass_weight_bytes'] / GB:.3g} GB; new stacked values made: "
          f"{chk['stacked_values_made'] or 'none'}; dtype copies of them (CPU backend): "
          f"{chk['weight_copy_bytes'] / GB:.3g} GB; not updated in place: "
          f"{chk['not_in_place'] or 'none'}; step temporaries {res['grass']['temp_bytes'] / GB:.3g} GB",
          flush=True)
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
        f"{m['batch']} x {m['seq'] - 1} tokens, jax.checkpoint per block, "
        f"lax.scan over stacked weights; GRASS step "
        f"compiled in {g['compile_seconds']:.0f} s", "",
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
    # Checks of the HLO's text, written against the CPU backend's HLO: on a GPU, whose compiler
    # fuses, lays out and copies differently, they are reported (and written to the .md) but do
    # not fail the run; the memory numbers above and below decide it there.
    hlo = []
    if chk["stacked_weights_found"] != len(GRASS_NAMES):
        hlo.append(f"found {chk['stacked_weights_found']} stacked GRASS weights in the step's "
                   f"parameters, not {len(GRASS_NAMES)}")
    if chk["stacked_values_made"]:
        hlo.append(f"the GRASS step makes stacked values: {chk['stacked_values_made']}")
    if not ad["stacked_values_made"]:
        hlo.append("sanity: the HLO check finds no stacked gradient in optax.adamw's step either")
    if chk["not_in_place"]:
        hlo.append(f"not updated in place: {chk['not_in_place']}")
    if on_gpu:
        for h in hlo:
            print(f"NOTE (HLO-structure check, written for the CPU backend's HLO): {h}", flush=True)
        if hlo and os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "memory_13b.md"), "a") as f:
                f.write("\nHLO-structure checks (written for the CPU backend's HLO; not failing on the GPU):\n"
                        + "".join(f"- {h}\n" for h in hlo))
    else:
        bad += hlo
    # a stacked gradient of the GRASS weights would be at least their bytes (bf16)
    if res["grass"]["temp_bytes"] - chk["weight_copy_bytes"] >= chk["stacked_grass_weight_bytes"]:
        bad.append(f"the GRASS step's temporaries ({res['grass']['temp_bytes'] / GB:.3g} GB, "
                   f"{chk['weight_copy_bytes'] / GB:.3g} GB of them dtype copies of the weights) "
                   f"are not below the stacked GRASS weights' "
                   f"{chk['stacked_grass_weight_bytes'] / GB:.3g} GB")
    for b in bad:
        print(f"FAIL: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
