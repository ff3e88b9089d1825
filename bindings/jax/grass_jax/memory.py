"""Memory plan of a model before training: what grass holds, against AdamW and GaLore.

    python -m grass_jax.memory --model llama-7b|llama-13b|FILE.json [--rank R] [--device cpu|cuda]

From Python: `plan(model)`, or `plan(model_of(opt, params))` for a grass_adamw and its params
(each GRASS weight at the rank it gets, the rank rule's when rank=None).

The numbers come from libgrass's `grass_memory_plan` (the same sizes its handles allocate), so
they hold for a C/C++ training loop on one context; a JAX step keeps the same states in its
pytree and lets XLA place the op workspaces.

Model file (JSON; every key but "matrices" is optional):

    {
      "name": "my-model",
      "max_tokens": 8192,        tokens per backward call (X and dY rows)
      "act_dtype": "bf16",       dtype of X and dY: "f32" | "bf16" | "f16"
      "w_dtype": "bf16",         default dtype of the weights
      "state_dtype": "bf16",     dtype of the GRASS matrices' M and V: "f32" | "bf16"
                                 (default: the library's, grass_adamw's state_dtype)
      "dense_state_dtype": "f32", dtype of the dense parameters' M and V, and of AdamW's and
                                 GaLore's states (default: the library's, f32)
      "rank": 1024,              default r of the projected matrices; absent or null: the
                                 rank rule (grass_default_rank of each matrix's d)
      "side": "auto",            default projected side: "rows" | "cols" | "auto"
      "matrices": [              weights trained with GRASS (GaLore projects the same ones)
        {"name": "attn", "m": 4096, "n": 4096, "count": 128,
         "rank": 1024, "side": "auto", "w_dtype": "bf16"}        (the last three optional)
      ],
      "dense": [                 parameters every method trains with plain AdamW
        {"name": "embed", "numel": 131072000, "count": 1, "w_dtype": "bf16"}
      ]
    }

What each column counts (per model, in GiB):
    weights      every matrix and dense parameter at its w_dtype (the same for every method)
    states       grass: M and V (r x k at state_dtype) and the step counts of each GRASS matrix,
                 M and V of each dense parameter (at dense_state_dtype); AdamW: M and V of every
                 parameter (2 x numel at dense_state_dtype); GaLore: M and V (r x k) of each
                 projected matrix, 2 x numel for the dense parameters (at dense_state_dtype)
    gradients    what exists at once after the backward pass: grass: the f32 compressed
                 gradient (r x k) of each GRASS matrix plus the dense parameters' gradients;
                 AdamW and GaLore: the full gradient of every parameter at its w_dtype
    projection   grass: the selection (indices, previous indices, scales, row scores);
                 GaLore: its d x r projection matrix per projected matrix at w_dtype (GaLore
                 keeps it in the gradient's dtype)
    workspace    grass: the context's shared scratch, the largest any op of the model needs
                 (ops run one after another on a stream); not counted for the others
Activations are not counted for anyone (they depend on the model code, not the optimizer).
"""

import argparse
import ctypes
import json
import sys

import jax.numpy as jnp
import numpy as np

from . import _lib

GIB = float(1 << 30)
DTYPES = {"f32": _lib.DTYPE_F32, "bf16": _lib.DTYPE_BF16, "f16": _lib.DTYPE_F16}
STATE_DTYPES = {"f32": _lib.DTYPE_F32, "bf16": _lib.DTYPE_BF16}


class MemoryLayer(ctypes.Structure):
    """grass_memory_layer of grass.h."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t), ("m", ctypes.c_int64), ("n", ctypes.c_int64),
        ("rank", ctypes.c_int64), ("side", ctypes.c_int32), ("w_dtype", ctypes.c_int32),
        ("act_dtype", ctypes.c_int32), ("count", ctypes.c_int64),
    ]


_REPORT_FIELDS = [
    "weight_bytes",
    "grass_state_bytes", "grass_gradient_bytes", "grass_selection_bytes",
    "grass_workspace_bytes", "grass_handle_bytes", "grass_total_bytes",
    "adamw_state_bytes", "adamw_gradient_bytes", "adamw_total_bytes",
    "galore_state_bytes", "galore_gradient_bytes", "galore_projection_bytes", "galore_total_bytes",
]


class MemoryReport(ctypes.Structure):
    """grass_memory_report of grass.h."""

    _fields_ = [("struct_size", ctypes.c_size_t)] + [(f, ctypes.c_int64) for f in _REPORT_FIELDS]


def llama(layers, hidden, mlp, vocab=32000, rank=1024):
    """A LLaMA-shaped model: per block q, k, v, o (hidden x hidden), gate and up
    (mlp x hidden), down (hidden x mlp) trained with GRASS; the embedding, the output head and
    the RMSNorm gains trained densely."""
    return {
        "name": f"LLaMA {layers} layers, hidden {hidden}, MLP {mlp}, vocab {vocab}",
        "rank": rank,
        "matrices": [
            {"name": "attention q, k, v, o", "m": hidden, "n": hidden, "count": 4 * layers},
            {"name": "MLP gate, up", "m": mlp, "n": hidden, "count": 2 * layers},
            {"name": "MLP down", "m": hidden, "n": mlp, "count": layers},
        ],
        "dense": [
            {"name": "embedding", "numel": vocab * hidden, "count": 1},
            {"name": "output head", "numel": vocab * hidden, "count": 1},
            {"name": "RMSNorm gains", "numel": hidden, "count": 2 * layers + 1},
        ],
    }


PRESETS = {
    "llama-7b": lambda rank: llama(32, 4096, 11008, rank=rank),
    "llama-13b": lambda rank: llama(40, 5120, 13824, rank=rank),
}


class ModelError(ValueError):
    """A model description that cannot be planned; the message says where and why."""


def _int(where, v, low=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ModelError(f"{where} must be an integer >= {low}, got {json.dumps(v)}")
    return v


def _choice(where, v, choices):
    if v not in choices:
        raise ModelError(f"{where} must be one of {', '.join(sorted(choices))}, got {json.dumps(v)}")
    return choices[v]


def _keys(where, d, allowed):
    if not isinstance(d, dict):
        raise ModelError(f"{where} must be an object, got {json.dumps(d)[:40]}")
    extra = sorted(set(d) - set(allowed))
    if extra:
        raise ModelError(f"{where} has unknown key {extra[0]!r} (known: {', '.join(sorted(allowed))})")


def layers_of(model, rank=None):
    """(ctypes array of grass_memory_layer, max_tokens, (GRASS, dense) state dtype codes) of a
    model dict."""
    _keys("model", model, {"name", "max_tokens", "act_dtype", "w_dtype", "state_dtype",
                           "dense_state_dtype", "rank", "side", "matrices", "dense"})
    max_tokens = _int("max_tokens", model.get("max_tokens", 8192))
    act = _choice("act_dtype", model.get("act_dtype", "bf16"), DTYPES)
    w_default = model.get("w_dtype", "bf16")
    _choice("w_dtype", w_default, DTYPES)
    lib = _lib.defaults()
    short = {"float32": "f32", "bfloat16": "bf16"}
    state = tuple(_choice(key, model.get(key, short[lib[key]]), STATE_DTYPES)
                  for key in ("state_dtype", "dense_state_dtype"))
    rank_default = rank if rank is not None else model.get("rank")
    side_default = model.get("side", "auto")
    _choice("side", side_default, _lib.SIDES)
    matrices, dense = model.get("matrices"), model.get("dense", [])
    if not isinstance(matrices, list) or not matrices:
        raise ModelError("matrices must be a non-empty list of {\"m\", \"n\", \"count\", ...}")
    if not isinstance(dense, list):
        raise ModelError("dense must be a list of {\"numel\", \"count\", ...}")
    out = []
    for i, mat in enumerate(matrices):
        w = f"matrices[{i}]"
        _keys(w, mat, {"name", "m", "n", "count", "rank", "side", "w_dtype"})
        for key in ("m", "n"):
            if key not in mat:
                raise ModelError(f"{w} needs {key!r}")
        m, n = _int(f"{w}.m", mat["m"]), _int(f"{w}.n", mat["n"])
        side = _choice(f"{w}.side", mat.get("side", side_default), _lib.SIDES)
        r = mat.get("rank", rank_default) if rank is None else rank
        if r is None:  # the rank rule, as grass_adamw(rank=None) and the C handles apply it
            r = _lib.default_rank(_lib.resolve_side(m, n, side)[1])
        out.append(MemoryLayer(
            ctypes.sizeof(MemoryLayer), m, n, _int(f"{w}.rank", r), side,
            _choice(f"{w}.w_dtype", mat.get("w_dtype", w_default), DTYPES), act,
            _int(f"{w}.count", mat.get("count", 1), 0)))
    for i, par in enumerate(dense):
        w = f"dense[{i}]"
        _keys(w, par, {"name", "numel", "count", "w_dtype"})
        if "numel" not in par:
            raise ModelError(f"{w} needs 'numel'")
        out.append(MemoryLayer(
            ctypes.sizeof(MemoryLayer), _int(f"{w}.numel", par["numel"]), 1, 0, _lib.SIDE_AUTO,
            _choice(f"{w}.w_dtype", par.get("w_dtype", w_default), DTYPES), act,
            _int(f"{w}.count", par.get("count", 1), 0)))
    return (MemoryLayer * len(out))(*out), max_tokens, state


def plan(model, rank=None, device="cpu"):
    """The memory report (a dict of byte counts, keys as in grass_memory_report) of a model
    dict for a context of `device` ("cpu" or "cuda": the workspace differs by backend)."""
    layers, max_tokens, state = layers_of(model, rank)
    lib = _lib.libgrass()
    ctx = _lib._context("cuda" if device == "cuda" else "cpu")
    cfg = _lib._AdamWConfig()
    _lib.check(lib.grass_adamw_config_init_sized(ctypes.byref(cfg), ctypes.sizeof(cfg)),
               "grass_adamw_config_init_sized")
    cfg.state_dtype, cfg.dense_state_dtype = state
    rep = MemoryReport()
    rep.struct_size = ctypes.sizeof(MemoryReport)
    _lib.check(lib.grass_memory_plan(ctx, ctypes.byref(cfg), layers, len(layers), max_tokens,
                                     ctypes.byref(rep)), "grass_memory_plan")
    return {f: getattr(rep, f) for f in _REPORT_FIELDS}


def model_of(opt, params, max_tokens=8192, act_dtype="bf16"):
    """The model dict (as `plan` takes) of a grass_adamw and its params: one matrix per GRASS
    weight at the rank, side and slice count it gets (`opt.layer_configs`), one dense entry
    per other leaf, the weights' dtypes, opt.state_dtype and opt.dense_state_dtype. The dense
    states count as grass's own AdamW (dense=None); another optax `dense` holds what it holds."""
    names = {jnp.dtype(jnp.float32): "f32", jnp.dtype(jnp.bfloat16): "bf16",
             jnp.dtype(jnp.float16): "f16"}

    def w_dtype(leaf, where):
        dt = jnp.dtype(jnp.result_type(leaf))
        if dt not in names:
            raise ModelError(f"{where}: dtype {dt} is not one the plan knows (f32, bf16, f16)")
        return names[dt]

    leaves, treedef, configs = opt.layer_configs(params)
    name = {jnp.dtype(jnp.float32): "f32", jnp.dtype(jnp.bfloat16): "bf16"}
    state, dense_state = name[jnp.dtype(opt.state_dtype)], name[jnp.dtype(opt.dense_state_dtype)]
    matrices, dense = [], []
    for leaf, c in zip(leaves, configs):
        if c is None:
            dense.append({"numel": int(np.prod(jnp.shape(leaf), dtype=np.int64)),
                          "w_dtype": w_dtype(leaf, "a dense leaf")})
        else:
            matrices.append({"name": c.name, "m": c.m, "n": c.n, "rank": c.rank,
                             "side": c.side, "count": c.slices,
                             "w_dtype": w_dtype(leaf, f"GRASS leaf {c.name}")})
    if not matrices:
        raise ModelError("the optimizer has no GRASS weight in these params (grass_mask)")
    return {"max_tokens": int(max_tokens), "act_dtype": act_dtype, "state_dtype": state,
            "dense_state_dtype": dense_state, "matrices": matrices, "dense": dense}


def table(rep):
    """The report as a text table in GiB, one row per method."""
    g = lambda v: f"{v / GIB:9.2f}"  # noqa: E731
    head = (f"{'':8} {'weights':>9} {'states':>9} {'gradients':>9} {'projection':>10} "
            f"{'workspace':>9} {'total':>9}")
    w = rep["weight_bytes"]
    rows = [
        ("grass", rep["grass_state_bytes"], rep["grass_gradient_bytes"],
         rep["grass_selection_bytes"], rep["grass_workspace_bytes"], rep["grass_total_bytes"]),
        ("AdamW", rep["adamw_state_bytes"], rep["adamw_gradient_bytes"], 0, 0,
         rep["adamw_total_bytes"]),
        ("GaLore", rep["galore_state_bytes"], rep["galore_gradient_bytes"],
         rep["galore_projection_bytes"], 0, rep["galore_total_bytes"]),
    ]
    lines = [head] + [f"{name:8} {g(w)} {g(s)} {g(gr)} {g(p):>10} {g(ws)} {g(t)}"
                      for name, s, gr, p, ws, t in rows]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m grass_jax.memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="llama-7b, llama-13b or a JSON file")
    ap.add_argument("--rank", type=int, help="r of every projected matrix (default: the model's)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="backend whose workspace sizes count (cuda needs a GPU)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON too")
    args = ap.parse_args(argv)
    try:
        if args.rank is not None and args.rank < 1:
            raise ModelError(f"--rank must be >= 1, got {args.rank}")
        if args.model in PRESETS:
            model = PRESETS[args.model](args.rank or 1024)
        else:
            try:
                with open(args.model) as f:
                    model = json.load(f)
            except OSError as e:
                raise ModelError(f"cannot read it: {e.strerror}") from None
            except json.JSONDecodeError as e:
                raise ModelError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        rep = plan(model, args.rank, args.device)
    except (ModelError, _lib.GrassError) as e:
        print(f"grass_jax.memory: {args.model}: {e}", file=sys.stderr)
        return 2
    name = model.get("name", args.model) if isinstance(model, dict) else args.model
    print(f"{name}: memory plan ({args.device} context), GiB")
    print(table(rep))
    if args.json:
        print(json.dumps(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
