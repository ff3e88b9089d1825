"""Train a small LLaMA-style byte-level language model with grass, AdamW and GaLore.

    python -m grass_jax.train                     # compare grass, optax.adamw, optax GaLore
    python -m grass_jax.train --optimizers grass --method uniform_nr --scaling none --alpha 0.25
    python -m grass_jax.train --preset gpu-small  # a larger model, for a GPU

The text is the `.py` sources of the running interpreter's standard library (no download),
split into train and validation by file. Every optimizer trains the same model from the same
initial weights on the same batches in the same order. grass projects every attention and MLP
weight (through `grass_linear`); embedding, head and norms take dense AdamW, as they do under
GaLore. GaLore's rank is chosen so that its optimizer state takes as many bytes as grass's.

At the end it prints one row per optimizer (final validation loss and bits per byte, train
loss, optimizer-state bytes, bytes of the attention and MLP weight gradients held at the step,
tokens/s, wall time) and writes results.json, results.md and curves.png into --out.
`python -m grass_jax.train --help` lists every option."""

import argparse
import dataclasses
import inspect
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROG = "python -m grass_jax.train"
OPTIMIZERS = ("grass", "adamw", "galore")
# Opt-in only (not in the default comparison): grass_jax.research's jnp twin of grass on full
# gradients, with the research options (residual updates, per-layer rank).
RESEARCH = ("grass_ref",)


class UsageError(Exception):
    """Bad input: reported as one line and exit status 2."""


# -- configuration ---------------------------------------------------------------------------

# Sizes and lengths of each preset; any of them can be overridden on the command line.
PRESETS = {
    # rank 64 of d = 128 (and of w_down's 352): with grass's bf16 moments, the bytes of rank 32
    # in f32, where the measurements before 0.8 ran
    "cpu": dict(d_model=128, layers=4, heads=4, ffn=352, seq_len=64, batch=16, steps=300,
                warmup=30, eval_every=50, eval_batches=8, rank=64, memory=False),
    # The cpu preset's model on 20x its tokens (1500 x 32 x 128 bytes): where the optimizers'
    # gaps open. About 10-25 minutes per optimizer on two CPU cores.
    "long": dict(d_model=128, layers=4, heads=4, ffn=352, seq_len=128, batch=32, steps=1500,
                 warmup=150, eval_every=150, eval_batches=16, rank=64, memory=False),
    "gpu-small": dict(d_model=512, layers=8, heads=8, ffn=1408, seq_len=512, batch=32,
                      steps=2000, warmup=200, eval_every=200, eval_batches=32, rank=256,
                      memory=True),
}

# Each optimizer's learning rate when --lr is not given: the best of the learning-rate sweep
# in bench/sweep_train.py on the cpu preset (AdamW: 1e-3 .. 6e-3; GaLore, scale 0.25:
# 1e-2 .. 8e-2). grass's depends on its update scale alpha (the projected weights step by
# lr·alpha, the dense ones by lr): the best measured for the nearest alpha swept.
DEFAULT_LR = {"adamw": 2e-3, "galore": 4e-2}
GRASS_LR_BY_ALPHA = {1.0: 3e-3, 0.25: 4e-2, 0.177: 4e-2}


def grass_default_lr(alpha):
    near = min(GRASS_LR_BY_ALPHA, key=lambda a: abs(math.log(a / alpha)))
    return GRASS_LR_BY_ALPHA[near]


def _grass_defaults():
    """grass_adamw's own defaults: the trainer's grass run is grass as shipped."""
    from .optimizer import grass_adamw
    sig = inspect.signature(grass_adamw.__init__).parameters
    names = ("method", "power", "scaling", "side", "alpha", "refresh_mode", "refresh_every",
             "state_dtype", "decay_mode", "residual", "residual_scale", "row_warmup")
    out = {n: sig[n].default for n in names}
    import jax.numpy as jnp
    out["state_dtype"] = jnp.dtype(out["state_dtype"]).name
    return out


@dataclasses.dataclass
class Config:
    preset: str = "cpu"
    optimizers: tuple = OPTIMIZERS
    seed: int = 0
    # model and data
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 352
    seq_len: int = 64
    batch: int = 16
    steps: int = 300
    warmup: int = 30
    schedule: str = "cosine"
    final_lr_ratio: float = 0.1
    eval_every: int = 50
    eval_batches: int = 8
    lr: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_LR, grass=None))
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    # grass
    rank: int = 32
    method: str = "uniform_nr"
    power: int = 2
    scaling: str = "none"
    side: str = "cols"
    alpha: float = 0.25
    refresh_mode: str = "reset"
    refresh_every: int = 200
    state_dtype: str = "float32"
    decay_mode: str = "selected"
    residual: str = "none"        # grass: none | sign (library); grass_ref: also sgd, fira
    residual_scale: float = 0.1
    row_warmup: int = 0           # a run saved before the option existed had none
    # galore
    galore_rank: int = 0          # 0: match grass's optimizer-state bytes
    galore_scale: float = 0.25
    galore_refresh_every: int = 200  # optax's; 0 (a run saved by 0.6 or older): grass's K
    # grass_ref (research twin) only
    rank_alloc: str = "uniform"
    state_rounding: str = "nearest"
    second_moment: str = "full"
    first_moment_dtype: str = ""  # "": the moments' --state-dtype
    memory: bool = False

    def model(self):
        from .model import ModelConfig
        return ModelConfig(d_model=self.d_model, layers=self.layers, heads=self.heads,
                           ffn=self.ffn, seq_len=self.seq_len)


# Options that describe the training run (a resumed run must not change them).
TRAINING_FIELDS = [f.name for f in dataclasses.fields(Config)]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return v


def _nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} must be a non-negative integer")
    return v


def _float(lo=None, lo_open=False, hi=None, hi_open=False):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number")
        if not math.isfinite(v) or (lo is not None and (v < lo or (lo_open and v == lo))) or \
                (hi is not None and (v > hi or (hi_open and v == hi))):
            lo_s = "" if lo is None else ("> " if lo_open else ">= ") + f"{lo:g}"
            hi_s = "" if hi is None else ("< " if hi_open else "<= ") + f"{hi:g}"
            raise argparse.ArgumentTypeError(
                f"{text} must be a finite number {' and '.join(s for s in (lo_s, hi_s) if s)}")
        return v
    return parse


def _optimizer_list(text):
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in OPTIMIZERS + RESEARCH]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"unknown optimizer {', '.join(map(repr, bad)) or repr(text)} (choose from "
            f"{', '.join(OPTIMIZERS + RESEARCH)}, comma-separated)")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names an optimizer twice")
    return tuple(names)


def build_parser():
    from .linear import LayerConfig  # noqa: F401  (grass_jax must import: fail early)
    from . import _lib
    g = _grass_defaults()
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                argument_default=argparse.SUPPRESS)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), help="model size and run length (default: cpu)")
    a("--optimizers", type=_optimizer_list,
      help=f"comma-separated, from {', '.join(OPTIMIZERS)} (default: all three)")
    a("--seed", type=_nonneg_int, help="initial weights and data order (default 0)")
    m = p.add_argument_group("model and data (defaults from the preset)")
    for name, help_ in (("d-model", "model width"), ("layers", "decoder blocks"),
                        ("heads", "attention heads"), ("ffn", "SwiGLU hidden width"),
                        ("seq-len", "bytes per sequence"), ("batch", "sequences per step"),
                        ("steps", "optimizer steps (the schedule's length)"),
                        ("eval-every", "steps between validation losses"),
                        ("eval-batches", "validation batches")):
        m.add_argument(f"--{name}", type=_positive_int, help=help_)
    m.add_argument("--warmup", type=_nonneg_int,
                   help="linear warm-up steps (default: the preset's, a tenth of its steps; "
                        "with --steps, a tenth of those)")
    o = p.add_argument_group("optimization (every optimizer)")
    o.add_argument("--lr", type=_float(0, True),
                   help=f"learning rate of every optimizer (default: each its own: "
                        f"{', '.join(f'{k} {v:g}' for k, v in DEFAULT_LR.items())}, grass "
                        f"{', '.join(f'{v:g} at alpha {a:g}' for a, v in GRASS_LR_BY_ALPHA.items())})")
    for n in OPTIMIZERS:
        o.add_argument(f"--lr-{n}", type=_float(0, True), help=f"learning rate of {n}")
    o.add_argument("--schedule", choices=("cosine", "linear", "constant"),
                   help="decay after warm-up (default cosine)")
    o.add_argument("--final-lr-ratio", type=_float(0, False, 1),
                   help="the schedule's last learning rate / peak (default 0.1)")
    o.add_argument("--weight-decay", type=_float(0), help="decoupled weight decay (default 0)")
    o.add_argument("--b1", type=_float(0, False, 1, True), help="Adam beta1 (default 0.9)")
    o.add_argument("--b2", type=_float(0, False, 1, True), help="Adam beta2 (default 0.999)")
    from .research import (RANK_ALLOCS, RESEARCH_METHODS, RESIDUALS, SECOND_MOMENTS,
                           STATE_ROUNDINGS)
    s = p.add_argument_group("grass (defaults: grass_adamw's own)")
    s.add_argument("--rank", type=_positive_int, help="rows kept per weight, r (preset)")
    s.add_argument("--method", choices=sorted(_lib.METHODS) + list(RESEARCH_METHODS),
                   help=f"row selection ({g['method']}; cyclic: grass_ref only)")
    s.add_argument("--power", type=int, choices=(1, 2), help=f"score power p ({g['power']})")
    s.add_argument("--scaling", choices=sorted(_lib.SCALINGS), help=f"({g['scaling']})")
    s.add_argument("--side", choices=sorted(_lib.SIDES), help=f"projected side ({g['side']})")
    s.add_argument("--alpha", type=_float(0, True), help=f"update scale ({g['alpha']})")
    s.add_argument("--refresh-mode", choices=sorted(_lib.REFRESH_MODES),
                   help=f"Adam state at a refresh ({g['refresh_mode']})")
    s.add_argument("--refresh-every", type=_positive_int,
                   help=f"K, steps between row selections ({g['refresh_every']})")
    s.add_argument("--state-dtype", choices=("float32", "bfloat16"),
                   help=f"Adam moments ({g['state_dtype']})")
    s.add_argument("--decay-mode", choices=sorted(_lib.DECAY_MODES),
                   help=f"weight decay of GRASS weights ({g['decay_mode']})")
    s.add_argument("--row-warmup", type=_nonneg_int,
                   help=f"W: a state row's step is scaled by min(1, t/W), t its Adam steps "
                        f"since a refresh zeroed it; 0: off ({g['row_warmup']})")
    s.add_argument("--residual", choices=RESIDUALS,
                   help=f"update of the rows not selected: none (GRASS), sign (FRUGAL's "
                        f"signSGD, in the library: one more weight-gradient GEMM per step); "
                        f"grass_ref also: sgd, fira (Fira's norm-based scaling) "
                        f"({g['residual']})")
    s.add_argument("--residual-scale", type=_float(0, True),
                   help=f"the residual step is lr·alpha·this x the rule "
                        f"({g['residual_scale']:g})")
    q = p.add_argument_group("GaLore")
    q.add_argument("--galore-rank", type=_positive_int,
                   help="default: the rank whose optimizer state matches grass's in bytes")
    q.add_argument("--galore-scale", type=_float(0, True), help="update scale (default 0.25)")
    q.add_argument("--galore-refresh-every", type=_positive_int,
                   help="steps between SVDs (default 200: optax.contrib.galore's, where "
                        "GaLore was measured)")
    x = p.add_argument_group(
        "research (the optimizer grass_ref only: grass_jax.research, a jnp twin of grass on "
        "full gradients)")
    x.add_argument("--rank-alloc", choices=RANK_ALLOCS,
                   help="uniform: --rank for every weight; fraction: ranks proportional to "
                        "the projected dimension at the same state bytes (default uniform)")
    x.add_argument("--state-rounding", choices=STATE_ROUNDINGS,
                   help="f32 -> bf16 moments (--state-dtype bfloat16): nearest, or stochastic "
                        "(unbiased) rounding (default nearest)")
    x.add_argument("--second-moment", choices=SECOND_MOMENTS,
                   help="Adam's v for the selected rows: full (one per element), row (one per "
                        "selected row, Adam-mini-style: about twice the rank for the same "
                        "bytes) or factored (Adafactor's row and column factors) "
                        "(default full)")
    x.add_argument("--first-moment-dtype", choices=("float32", "bfloat16"),
                   help="M's dtype when it differs from V's (default: --state-dtype)")
    r = p.add_argument_group("output and checkpoints")
    r.add_argument("--out", help="folder for results.json, results.md, curves.png "
                                 "(default grass_train_out)")
    r.add_argument("--save", help="save each run into SAVE/<optimizer>/ (at the end, at "
                                  "--stop-at and every --save-every steps)")
    r.add_argument("--save-every", type=_positive_int, help="checkpoint interval in steps")
    r.add_argument("--resume", help="continue the runs saved in this folder, bit-identically "
                                    "(their options come from the folder)")
    r.add_argument("--stop-at", type=_positive_int,
                   help="stop after this step (the schedule still spans --steps)")
    r.add_argument("--memory", action="store_true",
                   help="add each step's device memory (XLA's plan) to the table "
                        "(on in gpu-small)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--traceback", action="store_true", help="show the traceback of a failure")
    return p


def make_config(given: dict, base: Config = None) -> Config:
    """Config from the options given on the command line (argparse names) over the preset's
    and the libraries' defaults, or over `base` (a resumed run's)."""
    if base is None:
        preset = given.get("preset", "cpu")
        cfg = Config(preset=preset, **_grass_defaults())
        for k, v in PRESETS[preset].items():
            setattr(cfg, k, v)
        if "steps" in given and "warmup" not in given:
            # The preset's warm-up is a share of its steps (a tenth): kept as a share, so a
            # short run (--steps 10) warms up for one step instead of refusing to start.
            share = PRESETS[preset]["warmup"] / PRESETS[preset]["steps"]
            cfg.warmup = min(int(round(share * given["steps"])), given["steps"] - 1)
    else:
        cfg = dataclasses.replace(base, lr=dict(base.lr))
    for k, v in given.items():
        if k in ("lr",):
            cfg.lr = {n: v for n in OPTIMIZERS + RESEARCH}
        elif k.startswith("lr_"):
            cfg.lr[k[3:]] = v
        elif k in TRAINING_FIELDS:
            setattr(cfg, k, v)
    if cfg.lr.get("grass") is None:
        cfg.lr["grass"] = grass_default_lr(cfg.alpha)
    if cfg.lr.get("grass_ref") is None:
        cfg.lr["grass_ref"] = cfg.lr["grass"]
    return cfg


# -- optimizers ------------------------------------------------------------------------------

def schedule_fn(cfg: Config, peak):
    """count -> learning rate: linear warm-up from peak/warmup to peak, then `cfg.schedule` to
    peak·final_lr_ratio at the last step. jnp code: usable on a traced step counter."""
    import jax.numpy as jnp
    warm, total, final, kind = cfg.warmup, cfg.steps, cfg.final_lr_ratio, cfg.schedule

    def lr(count):
        s = jnp.asarray(count, jnp.float32)
        w = jnp.minimum(1.0, (s + 1.0) / max(warm, 1))
        t = jnp.clip((s - warm) / max(total - 1 - warm, 1), 0.0, 1.0)
        if kind == "cosine":
            decay = final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        elif kind == "linear":
            decay = 1.0 - (1.0 - final) * t
        else:
            decay = jnp.ones_like(t)
        return peak * w * decay

    return lr


def make_grass(cfg: Config):
    import jax.numpy as jnp
    import optax
    from .model import is_projected
    from .optimizer import grass_adamw
    sched = schedule_fn(cfg, cfg.lr["grass"])
    dense = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    return grass_adamw(
        sched, grass_mask=is_projected, rank=cfg.rank, refresh_every=cfg.refresh_every,
        method=cfg.method, power=cfg.power, scaling=cfg.scaling, side=cfg.side,
        seed=cfg.seed, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
        decay_mode=cfg.decay_mode, alpha=cfg.alpha, refresh_mode=cfg.refresh_mode,
        state_dtype=jnp.dtype(cfg.state_dtype), dense=dense, residual=cfg.residual,
        residual_scale=cfg.residual_scale, row_warmup=cfg.row_warmup)


def make_grass_ref(cfg: Config):
    import jax.numpy as jnp
    import optax
    from .model import is_projected
    from .research import grass_reference
    if cfg.weight_decay:
        raise UsageError("grass_ref does not implement weight decay: --weight-decay 0")
    sched = schedule_fn(cfg, cfg.lr["grass_ref"])
    dense = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    return grass_reference(
        sched, grass_mask=is_projected, rank=cfg.rank, refresh_every=cfg.refresh_every,
        method=cfg.method, power=cfg.power, scaling=cfg.scaling, side=cfg.side, seed=cfg.seed,
        b1=cfg.b1, b2=cfg.b2, alpha=cfg.alpha, refresh_mode=cfg.refresh_mode,
        state_dtype=jnp.dtype(cfg.state_dtype), dense=dense, residual=cfg.residual,
        residual_scale=cfg.residual_scale, rank_alloc=cfg.rank_alloc,
        row_warmup=cfg.row_warmup, state_rounding=cfg.state_rounding,
        second_moment=cfg.second_moment, first_moment_dtype=cfg.first_moment_dtype or None)


def make_adamw(cfg: Config):
    import optax
    return optax.adamw(schedule_fn(cfg, cfg.lr["adamw"]), b1=cfg.b1, b2=cfg.b2,
                       weight_decay=cfg.weight_decay)


def galore_refresh_every(cfg: Config):
    """Steps between GaLore's SVDs: its own period (200 unless --galore-refresh-every), or
    grass's K for a run saved by 0.6 or older, which stored 0 for "grass's"."""
    return cfg.galore_refresh_every or cfg.refresh_every


def make_galore(cfg: Config, params, rank):
    import jax
    import optax
    from optax.contrib import GaLoreDimensionNumbers, galore
    from .model import is_projected
    dims = jax.tree_util.tree_map_with_path(
        lambda path, leaf: GaLoreDimensionNumbers() if is_projected(path) else None, params)
    return galore(schedule_fn(cfg, cfg.lr["galore"]), rank=rank,
                  update_proj_gap=galore_refresh_every(cfg),
                  scale=cfg.galore_scale, weight_decay=cfg.weight_decay,
                  base_optimizer=optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2),
                  weight_dimension_numbers=dims)


def tree_bytes(tree):
    import jax
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape))
                   for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype")))


def state_bytes(opt_init, params):
    """Bytes of an optimizer's state for `params`, from shapes alone (nothing allocated)."""
    import jax
    return tree_bytes(jax.eval_shape(opt_init, params))


def matched_galore_rank(cfg: Config, params, target):
    """The GaLore rank whose state bytes come closest to `target` (the smaller on a tie)."""
    from .model import projected_names
    top = max(min(shape) for _, shape in projected_names(params))
    size = lambda r: state_bytes(make_galore(cfg, params, r).init, params)
    lo, hi = 1, top
    while lo < hi:  # smallest r with size(r) >= target
        mid = (lo + hi) // 2
        if size(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    if lo > 1 and abs(size(lo - 1) - target) <= abs(size(lo) - target):
        lo -= 1
    return lo


def check_ranks(cfg: Config, params):
    """Refuses a grass or GaLore rank larger than a projected weight allows (naming the
    weight that bounds it)."""
    from . import ops
    from .model import projected_names
    shapes = projected_names(params)
    if "grass" in cfg.optimizers or "grass_ref" in cfg.optimizers:
        d, name, m, n, side = min((ops.resolve_side(m, n, cfg.side)[1], name, m, n,
                                   ops.resolve_side(m, n, cfg.side)[0])
                                  for name, (m, n) in shapes)
        if cfg.rank > d:
            raise UsageError(f"--rank {cfg.rank} exceeds the projected dimension {d} of {name} "
                             f"({m} x {n}, side {side}): use --rank <= {d}")
    if "galore" in cfg.optimizers and cfg.galore_rank:
        low, name, m, n = min((min(m, n), name, m, n) for name, (m, n) in shapes)
        if cfg.galore_rank > low:
            raise UsageError(f"--galore-rank {cfg.galore_rank} exceeds {name}'s smaller "
                             f"dimension ({m} x {n}): use --galore-rank <= {low}")


def weight_grad_bytes(cfg: Config, name, params):
    """Bytes of the attention and MLP weight gradients an optimizer's step holds: grass's
    compressed r x k (f32) per weight, and with the residual the X and dY (f32, one row per
    token) each layer hands over to the step; the others' m x n."""
    from . import ops
    from .model import projected_names
    total = 0
    for _, (m, n) in projected_names(params):
        if name == "grass":
            _, d, k = ops.resolve_side(m, n, cfg.side)
            total += min(cfg.rank, d) * k * 4
            if cfg.residual != "none":
                total += cfg.batch * cfg.seq_len * (m + n) * 4
        else:
            total += m * n * 4
    return total


# -- one run ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Progress:
    """What a run has done so far (saved with its checkpoints)."""
    step: int = 0
    train_loss: list = dataclasses.field(default_factory=list)   # one per step
    val: list = dataclasses.field(default_factory=list)          # [step, loss]
    train_seconds: float = 0.0     # step time; the first step after each compilation excluded
    timed_steps: int = 0
    wall_seconds: float = 0.0
    compile_seconds: float = 0.0
    diverged_at: int = -1


class Run:
    """One optimizer on the model: its step function, state and progress."""

    def __init__(self, cfg: Config, name: str, params, galore_rank):
        import jax
        import optax
        from .model import loss_fn
        self.cfg, self.name = cfg, name
        mcfg = cfg.model()
        if name == "grass":
            opt = make_grass(cfg)
            # with the residual, each GRASS layer hands its X and dY (one row per token) over
            # to the step
            tokens = cfg.batch * cfg.seq_len if cfg.residual != "none" else None

            def step(params, state, windows):
                proj = opt.projections(params, state, tokens=tokens)
                loss, grads = opt.value_and_grad(
                    lambda p, pr, w: loss_fn(mcfg, p, pr, w))(params, proj, windows)
                params, state = opt.step(params, grads, state)
                return params, state, loss
        else:
            opt = (make_adamw(cfg) if name == "adamw" else make_grass_ref(cfg)
                   if name == "grass_ref" else make_galore(cfg, params, galore_rank))

            def step(params, state, windows):
                loss, grads = jax.value_and_grad(
                    lambda p: loss_fn(mcfg, p, None, windows))(params)
                updates, state = opt.update(grads, state, params)
                return optax.apply_updates(params, updates), state, loss

        self.opt = opt
        self.step_fn = jax.jit(step, donate_argnums=(0, 1))
        self.eval_fn = _eval_fn(mcfg)
        self.params = jax.tree_util.tree_map(lambda x: x.copy(), params)
        self.state = opt.init(self.params)
        self.progress = Progress()
        self.rank = cfg.rank if name in ("grass", "grass_ref") else (
            galore_rank if name == "galore" else None)

    # checkpoints
    def save(self, folder: Path):
        from .checkpoint import save_state
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.name}-", dir=folder))
        save_state(tmp / "params.npz", self.params)
        save_state(tmp / "state.npz", self.state)
        (tmp / "progress.json").write_text(json.dumps(dataclasses.asdict(self.progress)))
        dest = folder / self.name
        if dest.exists():
            old = folder / f".{self.name}-old"
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)

    def load(self, folder: Path):
        from .checkpoint import load_state
        src = folder / self.name
        self.params = load_state(src / "params.npz", self.params)
        self.state = load_state(src / "state.npz", self.state)
        self.progress = Progress(**json.loads((src / "progress.json").read_text()))

    def evaluate(self, valid):
        return float(np.mean([float(self.eval_fn(self.params, b)) for b in valid]))

    def train(self, corpus, valid, stop, save_dir=None, save_every=None, show=True):
        import jax
        from .data import train_batch
        cfg, pr = self.cfg, self.progress
        tokens = cfg.batch * cfg.seq_len
        bar = _bar(show, total=cfg.steps, initial=pr.step, desc=f"{self.name:>6}")
        t_start = time.perf_counter()
        compiled, timed = None, False
        try:
            while pr.step < stop:
                windows = jax.numpy.asarray(
                    train_batch(corpus, cfg.seed, pr.step, cfg.batch, cfg.seq_len))
                if compiled is None:
                    t0 = time.perf_counter()
                    compiled = self.step_fn.lower(self.params, self.state, windows).compile()
                    pr.compile_seconds += time.perf_counter() - t0
                    self.memory = _step_memory(compiled)
                t0 = time.perf_counter()
                self.params, self.state, loss = compiled(self.params, self.state, windows)
                loss = float(loss)
                dt = time.perf_counter() - t0
                if timed:  # the first step after compiling warms up: left out
                    pr.train_seconds += dt
                    pr.timed_steps += 1
                timed = True
                pr.train_loss.append(loss)
                pr.step += 1
                if not math.isfinite(loss) and pr.diverged_at < 0:
                    pr.diverged_at = pr.step
                if pr.step % cfg.eval_every == 0 or pr.step == cfg.steps:
                    pr.val.append([pr.step, self.evaluate(valid)])
                if bar is not None:
                    rate = tokens * pr.timed_steps / pr.train_seconds if pr.train_seconds else 0
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", refresh=False)
                    bar.update(1)
                if save_dir is not None and save_every and pr.step % save_every == 0 and \
                        pr.step < stop:
                    self.save(save_dir)
                if pr.diverged_at >= 0:
                    break
        finally:
            if bar is not None:
                bar.close()
            pr.wall_seconds += time.perf_counter() - t_start
        if save_dir is not None:
            self.save(save_dir)

    def result(self, cfg: Config, params0):
        pr = self.progress
        last_val = pr.val[-1][1] if pr.val else float("nan")
        tail = pr.train_loss[-max(1, min(len(pr.train_loss), cfg.eval_every)):]
        out = {
            "optimizer": self.name,
            "lr": cfg.lr[self.name],
            "rank": self.rank,
            "steps": pr.step,
            "final_val_loss": last_val,
            "bits_per_byte": last_val / math.log(2),
            "train_loss": float(np.mean(tail)) if tail else float("nan"),
            "state_bytes": tree_bytes(self.state),
            "weight_grad_bytes": weight_grad_bytes(cfg, self.name, params0),
            "tokens_per_s": (cfg.batch * cfg.seq_len * pr.timed_steps / pr.train_seconds
                             if pr.train_seconds else float("nan")),
            "wall_s": pr.wall_seconds,
            "compile_s": pr.compile_seconds,
            "diverged_at": pr.diverged_at if pr.diverged_at >= 0 else None,
            "train_curve": pr.train_loss,
            "val_curve": pr.val,
        }
        mem = getattr(self, "memory", None)
        if mem is not None:
            out["step_memory_bytes"] = mem
        return out


_EVAL = {}


def _eval_fn(mcfg):
    """The validation loss, plain matmuls: one compiled function per model for all runs."""
    if mcfg not in _EVAL:
        import jax
        from .model import loss_fn
        _EVAL[mcfg] = jax.jit(lambda p, w: loss_fn(mcfg, p, None, w))
    return _EVAL[mcfg]


def _step_memory(compiled):
    """Bytes a compiled step needs on its device by XLA's plan: arguments + outputs - aliased
    (donated) + temporaries. None where the backend does not say."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                   + m.temp_size_in_bytes)
    except Exception:  # not every backend implements it
        return None


def _bar(show, **kw):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise UsageError("the progress bars need tqdm (pip install tqdm), or pass --no-progress")
    return tqdm(leave=True, dynamic_ncols=True, **kw)


# -- reporting -------------------------------------------------------------------------------

def _bytes(n):
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def table(results, memory=False, steps=None):
    """Markdown table, one row per optimizer. A run that stopped before `steps` (the
    schedule's length) says so in its val loss: its numbers are partial."""
    head = ["optimizer", "lr", "val loss", "bits/byte", "train loss", "optimizer state",
            "W-grad held", "tokens/s", "wall s"]
    if memory:
        head.append("step memory")
    rows = [head, ["---"] * len(head)]
    for r in results:
        val = f"{r['final_val_loss']:.4f}" if r["diverged_at"] is None else \
            f"diverged at {r['diverged_at']}"
        if steps is not None and r["diverged_at"] is None and r["steps"] < steps:
            val += f" (partial: step {r['steps']} of {steps})"
        name = r["optimizer"] + (f" r={r['rank']}" if r["rank"] else "")
        row = [name, f"{r['lr']:g}", val, f"{r['bits_per_byte']:.4f}",
               f"{r['train_loss']:.4f}", _bytes(r["state_bytes"]),
               _bytes(r["weight_grad_bytes"]), f"{r['tokens_per_s']:,.0f}",
               f"{r['wall_s']:.1f}"]
        if memory:
            row.append(_bytes(r.get("step_memory_bytes")))
        rows.append(row)
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in rows)


def plot(results, path: Path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        y = np.asarray(r["train_curve"], np.float64)
        if y.size:
            w = max(1, min(25, y.size // 10))  # a moving average over w steps
            smooth = np.convolve(y, np.ones(w) / w, mode="valid")
            ax_t.plot(np.arange(w, y.size + 1), smooth, label=r["optimizer"])
        if r["val_curve"]:
            s, v = zip(*r["val_curve"])
            ax_v.plot(s, v, marker="o", ms=3, label=f"{r['optimizer']} "
                      f"({_bytes(r['state_bytes'])} state)")
    ax_t.set(title="train loss (moving average)", xlabel="step", ylabel="nats / byte")
    ax_v.set(title="validation loss", xlabel="step", ylabel="nats / byte")
    for ax in (ax_t, ax_v):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- driver ----------------------------------------------------------------------------------

def _writable_folder(path, what, created):
    """Creates `path` if needed and checks that files can be written into it. The folders it
    makes are appended to `created` (deepest first), so that a run that fails before writing
    anything can take them away again."""
    p = Path(path)
    new = []
    q = p.absolute()
    while not q.exists() and q != q.parent:
        new.append(q)
        q = q.parent
    try:
        p.mkdir(parents=True, exist_ok=True)
        created.extend(new)
        probe = tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot write there ({e.strerror or e})")
    return p


def _resume_config(folder: Path, given: dict) -> Config:
    try:
        saved = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise UsageError(f"--resume {folder}: no config.json there (not a folder written by "
                         f"--save)")
    except (OSError, ValueError) as e:
        raise UsageError(f"--resume {folder}: cannot read config.json ({e})")
    saved["optimizers"] = tuple(saved["optimizers"])
    base = Config(**saved)
    if not any((folder / n / "progress.json").exists() for n in base.optimizers):
        raise UsageError(f"--resume {folder}: no checkpoint there (the run stopped before "
                         f"its first save): start it again with --save instead")
    cfg = make_config(given, base)
    for f in TRAINING_FIELDS:
        if getattr(cfg, f) != getattr(base, f):
            raise UsageError(f"--resume {folder}: the saved run has {f} = {getattr(base, f)!r}; "
                             f"a resumed run continues with the saved options (drop the "
                             f"option, or start a new run)")
    return cfg


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    show_tb = "--traceback" in args
    try:
        return _main(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, not a traceback, unless asked for
        if show_tb:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {type(e).__name__}: {msg} (--traceback shows where)",
              file=sys.stderr)
        return 1


def _main(argv):
    created = []
    try:
        return _run(argv, created)
    except BaseException:
        # Nothing half-written: the folders this run made go again if they are still empty.
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


def _check_text(corpus, cfg: Config):
    """Refuses a --seq-len (or --batch / --eval-batches) that the text cannot fill."""
    if cfg.seq_len + 1 >= corpus.train.size:
        raise UsageError(f"--seq-len {cfg.seq_len} is longer than the training text "
                         f"({corpus.train.size:,} bytes)")
    n = cfg.eval_batches * cfg.batch
    if corpus.valid.size - cfg.seq_len - 1 < n:
        most = corpus.valid.size - n - 1
        raise UsageError(
            f"--seq-len {cfg.seq_len}: the validation text ({corpus.valid.size:,} bytes) is "
            f"too short for --eval-batches {cfg.eval_batches} x --batch {cfg.batch} windows "
            f"of {cfg.seq_len + 1} bytes"
            + (f" (use --seq-len <= {most})" if most > 0 else ""))


def _run(argv, created):
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    run_only = {"out", "save", "save_every", "resume", "stop_at", "no_progress", "traceback"}
    if "resume" in given:
        resume = Path(given["resume"])
        cfg = _resume_config(resume, {k: v for k, v in given.items() if k not in run_only})
    else:
        resume = None
        cfg = make_config({k: v for k, v in given.items() if k not in run_only})
    for option in ("rank_alloc", "state_rounding", "second_moment", "first_moment_dtype"):
        if option in given and "grass_ref" not in cfg.optimizers:
            flag = "--" + option.replace("_", "-")
            raise UsageError(f"{flag} applies to the research optimizer grass_ref only (add "
                             f"it to --optimizers; grass has no such option)")
    from .research import RESEARCH_METHODS
    if cfg.method in RESEARCH_METHODS and "grass" in cfg.optimizers:
        raise UsageError(f"--method {cfg.method} is a research rule of grass_ref only "
                         f"(--optimizers grass_ref)")
    if cfg.residual not in ("none", "sign") and "grass" in cfg.optimizers:
        raise UsageError(f"--residual {cfg.residual}: grass (the library) has none and sign; "
                         f"{cfg.residual} is a research rule of grass_ref only (--optimizers "
                         f"grass_ref)")
    try:
        cfg.model().check()
    except ValueError as e:
        raise UsageError(str(e))
    if cfg.warmup >= cfg.steps:
        raise UsageError(f"--warmup {cfg.warmup} must be less than --steps {cfg.steps}")
    stop = given.get("stop_at", cfg.steps)
    if stop > cfg.steps:
        raise UsageError(f"--stop-at {stop} is after the last step (--steps {cfg.steps})")
    show = not given.get("no_progress", False)
    if show:
        _bar(True, total=0, disable=True).close()  # tqdm is there: checked before any work
    try:
        import matplotlib  # noqa: F401  (the curves; checked before any work)
    except ImportError:
        raise UsageError("the loss curves need matplotlib (pip install matplotlib)")
    memory = cfg.memory or given.get("memory", False)

    import jax
    from .data import load_corpus, valid_batches
    from .model import init_params

    corpus = load_corpus()
    _check_text(corpus, cfg)
    params0 = init_params(cfg.model(), jax.random.PRNGKey(cfg.seed))
    check_ranks(cfg, params0)
    out = _writable_folder(given.get("out", "grass_train_out"), "--out", created)
    save = given.get("save") or (str(resume) if resume is not None else None)
    save_dir = _writable_folder(save, "--save", created) if save else None
    valid = [jax.numpy.asarray(b) for b in
             valid_batches(corpus, cfg.eval_batches, cfg.batch, cfg.seq_len)]
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params0))
    print(f"data: {corpus.train.size:,} training bytes ({corpus.train_files} files), "
          f"{corpus.valid.size:,} validation bytes ({corpus.valid_files} files) from "
          f"{corpus.root}", flush=True)
    print(f"model: {n_params:,} parameters, {cfg.layers} block{'s' if cfg.layers > 1 else ''} of width {cfg.d_model}, "
          f"{cfg.heads} heads, SwiGLU {cfg.ffn}, {cfg.seq_len}-byte sequences, batch "
          f"{cfg.batch}, {cfg.steps} steps on {jax.devices()[0].platform}", flush=True)

    # grass's bytes do not depend on the selection rule (a research one is the twin's alone)
    grass_bytes = state_bytes(make_grass(dataclasses.replace(
        cfg, method=cfg.method if cfg.method not in RESEARCH_METHODS else "uniform_nr")).init,
        params0)
    galore_rank = cfg.galore_rank
    if "galore" in cfg.optimizers:
        if not galore_rank:
            galore_rank = matched_galore_rank(cfg, params0, grass_bytes)
        gb = state_bytes(make_galore(cfg, params0, galore_rank).init, params0)
        print(f"optimizer state: grass rank {cfg.rank} {grass_bytes:,} bytes; GaLore rank "
              f"{galore_rank} {gb:,} bytes"
              + (" (rank chosen to match)" if not cfg.galore_rank else ""), flush=True)
    if save_dir is not None:
        (save_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))

    results = []
    for name in cfg.optimizers:
        run = Run(cfg, name, params0, galore_rank)
        if resume is not None and (resume / name / "progress.json").exists():
            run.load(resume)
        if run.progress.step < stop and run.progress.diverged_at < 0:
            run.train(corpus, valid, stop, save_dir, given.get("save_every"), show)
        res = run.result(cfg, params0)
        if getattr(run, "memory", None) is None and "step_memory_bytes" not in res and memory:
            res["step_memory_bytes"] = None
        results.append(res)
        del run

    text = table(results, memory, cfg.steps)
    title = (f"{n_params / 1e6:.2f}M-parameter byte LM on the Python standard library, "
             f"{cfg.steps} steps of {cfg.batch}x{cfg.seq_len} bytes")
    partial = any(r["steps"] < cfg.steps and r["diverged_at"] is None for r in results)
    if partial:
        title += f" (PARTIAL: stopped at step {stop} of {cfg.steps})"
    print()
    if partial:
        print(f"partial results: stopped at step {stop} of {cfg.steps} (--resume continues)")
    print(text)
    summary = {"config": dataclasses.asdict(cfg), "parameters": n_params,
               "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
               "data": {"root": corpus.root, "train_bytes": int(corpus.train.size),
                        "valid_bytes": int(corpus.valid.size)},
               "stopped_at": stop, "partial": partial, "results": results}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "results.md").write_text(title + "\n\n" + text + "\n")
    plot(results, out / "curves.png", title)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
