"""Memory of one jitted training step of a linear layer in JAX: GRASS (grass_jax) against
optax.adamw, for the same layer, batch and loss. For each it reports XLA's compiled memory
analysis (arguments, outputs, aliased bytes, scratch) and whether the compiled HLO forms an
m x n weight gradient; with --run it also runs the step and reads the device's peak memory,
each method in its own process so that the peaks do not mix.

The default is the issue's layer: W bf16 13824 x 5120, b = 8192 tokens, r = 256, GRASS state
f32. On a CPU use --small (or give the sizes): the compiled analysis is the same kind of
evidence, the peak is a GPU number.

Usage: python3 bench/bench_jax_memory.py [--small] [--run] [--m M --n N --b B --r R]
Writes $OUT/jax_memory.json and $OUT/jax_memory.md when OUT is set.
"""
import argparse
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax

import grass_jax as gj

DTYPE = jnp.bfloat16


def inputs(m, n, b):
    kx, kt, kw = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (b, n), DTYPE)
    t = jax.random.normal(kt, (b, m), DTYPE)
    w = (jax.random.normal(kw, (m, n), jnp.float32) * 0.02).astype(DTYPE)
    # a learned input scale in front of the layer: its gradient needs dX = dY·W, as every layer
    # but the first of a network does, so the step must also order that read of W
    return {"w": w, "s": jnp.ones((n,), DTYPE)}, x, t


def layer_loss(y, t, b):
    return jnp.mean(jnp.tanh(y.astype(jnp.float32)) * t.astype(jnp.float32)) * (y.shape[1] / b)


def grass_step(m, n, b, r):
    opt = gj.grass_adamw(1e-3, grass_mask={"w": True, "s": False}, rank=r, refresh_every=200)

    def loss_fn(p, proj, x, t):
        return layer_loss(gj.grass_linear(x * p["s"], p["w"], proj["w"]), t, b)

    def step(p, s, x, t):
        proj = opt.projections(p, s)
        loss, grads = opt.value_and_grad(loss_fn)(p, proj, x, t)
        p, s = opt.step(p, grads, s)
        return p, s, loss

    return opt.init, jax.jit(step, donate_argnums=(0, 1))


def adamw_step(m, n, b, r):
    tx = optax.adamw(1e-3)

    def loss_fn(p, x, t):
        return layer_loss((x * p["s"]) @ p["w"].T, t, b)

    def step(p, s, x, t):
        loss, g = jax.value_and_grad(loss_fn)(p, x, t)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    return tx.init, jax.jit(step, donate_argnums=(0, 1))


METHODS = {"grass": grass_step, "adamw": adamw_step}


def mn_producers(hlo, m, n):
    """Opcodes of the HLO instructions whose result is an m x n array (of any float type); a
    fusion that only converts (XLA names it wrapped_convert) counts as a convert."""
    shape = re.compile(r"%%([\w.-]+)\s*=\s*(?:f32|bf16|f16)\[%d,%d\]\{[^}]*\}\s+([\w-]+)\(" % (m, n))
    ops = set()
    for line in hlo.splitlines():
        if g := shape.search(line):
            name, op = g.groups()
            ops.add("convert" if op == "fusion" and name.startswith("wrapped_convert") else op)
    return sorted(ops)


def analyse(method, m, n, b, r):
    init, step = METHODS[method](m, n, b, r)
    params, x, t = inputs(m, n, b)
    state = init(params)
    compiled = step.lower(params, state, x, t).compile()
    a = compiled.memory_analysis()
    producers = mn_producers(compiled.as_text(), m, n)
    out = {
        "argument_bytes": a.argument_size_in_bytes,
        "output_bytes": a.output_size_in_bytes,
        "alias_bytes": a.alias_size_in_bytes,
        "temp_bytes": a.temp_size_in_bytes,
        "footprint_bytes": a.argument_size_in_bytes + a.output_size_in_bytes
        - a.alias_size_in_bytes + a.temp_size_in_bytes,
        "state_bytes": sum(v.size * v.dtype.itemsize for v in jax.tree_util.tree_leaves(state)),
        "mn_producers": producers,
        # an m x n array computed by anything but the parameter itself, a tuple view of it, a
        # copy of it or a dtype conversion of it: a weight gradient or an update
        "forms_mn_gradient": bool(set(producers) - {"parameter", "get-tuple-element", "copy",
                                                    "convert"}),
        # a whole second W (what XLA makes when it cannot order an in-place update)
        "copies_w": "copy" in producers,
        # W in another dtype (the CPU backend computes bf16 products in f32)
        "converts_w": "convert" in producers,
    }
    return out, (step, params, state, x, t)


def run_peak(method, m, n, b, r, steps=3):
    """Runs `steps` steps and returns the device's peak bytes in use (None where the backend
    does not report it), measured in this process from its start."""
    _, (step, params, state, x, t) = analyse(method, m, n, b, r)
    for _ in range(steps):
        params, state, loss = step(params, state, x, t)
    jax.block_until_ready((params, state, loss))
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use"), float(loss)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, default=13824)
    ap.add_argument("--n", type=int, default=5120)
    ap.add_argument("--b", type=int, default=8192)
    ap.add_argument("--r", type=int, default=256)
    ap.add_argument("--small", action="store_true", help="m, n, b, r = 1024, 512, 256, 32")
    ap.add_argument("--run", action="store_true", help="run 3 steps per method and read the peak")
    ap.add_argument("--peak-of", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.small:
        args.m, args.n, args.b, args.r = 1024, 512, 256, 32
    shape = (args.m, args.n, args.b, args.r)
    if args.peak_of:  # the child process of --run
        peak, loss = run_peak(args.peak_of, *shape)
        print(json.dumps({"peak_bytes": peak, "loss": loss}))
        return
    device = jax.devices()[0]
    result = {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
              "m": args.m, "n": args.n, "b": args.b, "r": args.r, "dtype": "bfloat16"}
    for method in METHODS:
        result[method], _ = analyse(method, *shape)
        if args.run:
            cmd = [sys.executable, __file__, "--peak-of", method, "--m", str(args.m), "--n", str(args.n),
                   "--b", str(args.b), "--r", str(args.r)]
            child = subprocess.run(cmd, check=True, capture_output=True, text=True)
            result[method].update(json.loads(child.stdout.strip().splitlines()[-1]))
    mib = lambda v: "n/a" if v is None else f"{v / 2**20:.1f}"  # noqa: E731
    rows = [f"{result['device']}, jax {result['jax']}; W {args.m} x {args.n} bf16, b = {args.b}, r = {args.r} "
            "(GRASS state f32, optax.adamw state in the parameter dtype)", "",
            "| step | state MiB | compiled footprint MiB | of which scratch MiB | peak in use MiB | "
            "forms an m x n gradient | copies W | converts W |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method in METHODS:
        o = result[method]
        rows.append(f"| {method} | {mib(o['state_bytes'])} | {mib(o['footprint_bytes'])} | {mib(o['temp_bytes'])} "
                    f"| {mib(o.get('peak_bytes'))} | {'yes' if o['forms_mn_gradient'] else 'no'} "
                    f"| {'yes' if o['copies_w'] else 'no'} | {'yes' if o['converts_w'] else 'no'} |")
    g, a = result["grass"], result["adamw"]
    rows += ["", f"GRASS / AdamW: footprint {g['footprint_bytes'] / a['footprint_bytes']:.2f}"
             + (f", peak {g['peak_bytes'] / a['peak_bytes']:.2f}" if g.get("peak_bytes") and a.get("peak_bytes")
                else "")]
    table = "\n".join(rows)
    print(table)
    print(json.dumps(result))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "jax_memory.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(os.environ["OUT"], "jax_memory.md"), "w") as f:
            f.write(table + "\n")
    if g["forms_mn_gradient"] or g["copies_w"] or not a["forms_mn_gradient"]:
        print("unexpected: the GRASS step must neither form an m x n gradient nor copy W, and the "
              "dense step must form the gradient", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
