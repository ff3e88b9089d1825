"""Learning-rate sweep and levers on the trainer's long preset (`--preset long`: the cpu
preset's model on 20x its tokens), every optimizer at the same optimizer-state bytes.

    python bench/sweep_long.py                    # every phase, in order
    python bench/sweep_long.py --phases lr        # some phases
    python bench/sweep_long.py --list             # the rows (as far as they are known) and commands
    python bench/sweep_long.py --table            # rewrite sweep.md from the rows run
    python bench/sweep_long.py --preset cpu --phases centre,research   # the levers, 20x cheaper

Each row is one single-optimizer run of the trainer. Its results are appended to
<out>/rows.jsonl (one JSON line per finished run) as soon as it finishes, and rows already
there are not run again; a run in progress checkpoints every 150 steps into
<out>/runs/<n>/ckpt and a restarted sweep resumes it from there (bit-identically). So the
sweep can be stopped at any time and continued with the same command. <out>/sweep.md is
rewritten after every row: val loss, ratio to the best AdamW and the best GaLore run, state
bytes and the command that reproduces the row.

Every grass row names all of grass's options (the defaults at the time of the measurement),
and every GaLore row its rank (26: the rank whose state bytes match grass's at rank 32, side
cols, f32 moments; about 0.28x AdamW's), so each command reproduces its row whatever the
defaults become.

Phases (in priority order; rows of later phases depend on the best learning rates found):
  lr      three learning rates per optimizer around the cpu preset's best (AdamW 2e-3,
          GaLore 4e-2, grass 4e-2 at alpha 0.25), centre first
  extend  one more learning rate where an optimizer's best is at the edge of its grid
  levers  grass at its best learning rate: bf16 state at twice the rank (equal bytes),
          refresh period and reset vs carry
  seeds   seed 1 of each optimizer's best row and of the best lever (close calls)
Phases run on request (--phases ...), mostly for the cpu screen (--preset cpu):
  centre          the first row of each optimizer's grid (the cpu preset's best rates)
  research        grass_ref (the jnp twin of grass in grass_jax.research): the twin itself,
                  signSGD and Fira residuals, rank per layer, bf16 moments at twice the rank
  research2       signSGD's scale from above; signSGD with bf16 moments at twice the rank
  refresh         carry instead of reset at K 200 and 100 (current defaults)
  research_seeds  seed 1 of AdamW, grass's defaults and the best research row
  residual        the long preset's grass + signSGD residual (x0.1)
  defaults        grass's learning-rate grid, then seed 1 of grass's and AdamW's best rows
  library         grass (the library) + signSGD residual x0.1 at 4e-2, at grass's best rate,
                  then seed 1 at 4e-2
  library_seed    that seed 1 alone (to run beside the library phase)
  library_rate    the library's residual at grass's best long rate, seeds 0 and 1
  library_bf16    the library's residual on bf16 moments at rank 64 (equal bytes), seeds 0, 1
  warmup          the research twin with a row warm-up of 20 and 100 steps
  library_warmup  the library's row warm-up 20: on the best residual configuration and on
                  plain grass (then with bf16 moments at rank 64), seeds 0 and 1
  warmup_plain    the row warm-up 20 on plain grass, seeds 0 and 1 (the cpu preset's check)
  warmup_short    the row warm-up 10 (and, on the cpu preset, 5) on plain grass, seeds 0, 1
  warmup_residual the library's residual at 4e-2 without and with the row warm-up 20 (cpu)
  warmup_default_best  the best residual configuration at the default row warm-up, 10
  rounding        bf16 moments at twice the rank in the research twin, rounded to nearest
                  (the library's) and stochastically, at the default row warm-up, seeds 0, 1
  refresh_warmup  the refresh period and carry again, now that the row warm-up removes the
                  jump after a refresh: K 100, 50 and 25 with reset, K 100 and 50 with carry,
                  seeds 0, 1 (long: K 50 reset at 3e-2 and 4e-2, then K 100 at 4e-2, on
                  seeds 0, 1)
  k50_best        the best configuration at K 50, seeds 0, 1
  select_warmup   the norm-weighted selections (multinomial_nr, top_r) at K 50 and the row
                  warm-up 10, seeds 0, 1
  rate_warmup     learning rates at the row warm-up 10 (cpu): bf16 moments at rank 64 at 2e-2
                  and 3e-2 with K 50 and 200 (and 4e-2 with K 50); f32 rank 32 with K 50 at 3e-2 and 6e-2; seeds 0, 1
  warmup_k50      the row warm-up 5 and 20 at K 50, seeds 0, 1
  alpha_k50       alpha 0.5 at half the rate and 0.125 at twice it (the same projected step,
                  the dense parameters' rate halved or doubled) at K 50, seeds 0, 1
  second_moment   the twin with a lighter V at rank 64: one per selected row (Adam-mini) or
                  Adafactor's factors, seeds 0, 1 (cpu)
  cyclic          the twin's random reshuffling of the units (every unit once per cycle) at
                  K 50 (cpu: also 25, 100), seeds 0, 1
  moment_bytes    f32 moments at rank 64 (2x bytes, a diagnosis) and the twin's bf16 M beside
                  f32 V at rank 42 (equal bytes), seeds 0, 1 (cpu)
  rank_alpha      bf16 moments at rank 64 with alpha 0.177 (= 0.25/sqrt 2: rank 32's update
                  norm) at the defaults' rate (cpu: and alpha 0.125, then 5e-2 and 3e-2; long:
                  then 5e-2 and 6e-2), seeds 0, 1
  seed2           seed 2 of 0.8's defaults at 5e-2 and of AdamW at 2e-3 (long)
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sweep_train import load_done  # noqa: E402

PRESET = ["--preset", "long"]
# grass's options as measured (grass_adamw's defaults at the time), named on every grass row.
GRASS = dict(method="uniform_nr", scaling="none", alpha="0.25", side="cols", rank="32",
             **{"refresh-every": "200", "refresh-mode": "reset", "state-dtype": "float32",
                "row-warmup": "0"})
GALORE = {"galore-rank": "26", "galore-scale": "0.25", "galore-refresh-every": "200"}
GRID = {"adamw": ["2e-3", "1e-3", "3e-3"], "galore": ["4e-2", "2e-2", "8e-2"],
        "grass": ["4e-2", "2e-2", "3e-2"]}
# The research twin (grass_jax.research via the trainer's grass_ref optimizer): the same
# options as grass plus its own.
SAVE_EVERY = "150"


def argv_for(opt, lr, seed=0, **over):
    """Trainer options of one row: the preset, the optimizer, its learning rate, and for grass
    (and grass_ref) every selection option (`over` replaces some), for GaLore its rank."""
    out = PRESET + ["--optimizers", opt, "--lr", lr]
    if seed:
        out += ["--seed", str(seed)]
    if opt in ("grass", "grass_ref"):
        opts = dict(GRASS, **over)
        for k, v in opts.items():
            out += [f"--{k}", v]
    elif opt == "galore":
        for k, v in dict(GALORE, **over).items():
            out += [f"--{k}", v]
    return out


def canonical(argv):
    """`argv` with its options in one order (the preset, optimizer, rate and seed, then
    grass's options in GRASS's order, then the rest as given), so that a row is one command
    however it was put together."""
    pairs = list(zip(argv[::2], argv[1::2]))
    first = ["--preset", "--optimizers", "--lr", "--seed"] + [f"--{k}" for k in GRASS]
    rank = {flag: i for i, flag in enumerate(first)}
    pairs.sort(key=lambda kv: rank.get(kv[0], len(first)))  # stable: the rest keep their order
    return [x for kv in pairs for x in kv]


def command(argv):
    return " ".join(["python -m grass_jax.train"] + argv)


def best(done, opt, seed=0, where=lambda r: True):
    rows = [r for r in done.values() if r["optimizer"] == opt and r["diverged_at"] is None
            and r.get("seed", 0) == seed and where(r)]
    return min(rows, key=lambda r: r["final_val_loss"], default=None)


def best_on_seeds(done, where):
    """The seed-0 row of the learning rate whose rows under `where` have the lowest mean over
    their seeds (a rate run on more seeds wins a tie of seed 0 alone)."""
    by_lr = {}
    for r in done.values():
        if where(r) and r["diverged_at"] is None:
            by_lr.setdefault(r["lr"], {})[r.get("seed", 0)] = r
    ok = [rows for rows in by_lr.values() if 0 in rows]
    mean = lambda rows: sum(r["final_val_loss"] for r in rows.values()) / len(rows)
    return min(ok, key=lambda rows: (mean(rows), -len(rows)), default={}).get(0)


def lr_rows(done):
    out = []
    for i in range(3):
        for opt in ("adamw", "grass", "galore"):
            lr = GRID[opt][i]
            out.append(("lr", f"{opt} lr {lr}", opt, argv_for(opt, lr)))
    return out


def _plain(r):
    """A row of the learning-rate phases (no lever)."""
    return r["phase"] in ("centre", "lr", "extend")


def extend_rows(done):
    """Where the best learning rate is the grid's smallest or largest, the next one out
    (x0.5 or x2), once every grid point of that optimizer has run."""
    out = []
    for opt, grid in GRID.items():
        lrs = sorted(float(x) for x in grid)
        ran = [r for r in done.values() if r["optimizer"] == opt and _plain(r)
               and r.get("seed", 0) == 0]
        if len({r["lr"] for r in ran}) < len(lrs):
            continue
        b = best(done, opt, where=_plain)
        if b is None:
            continue
        tried = sorted({r["lr"] for r in ran})
        if math.isclose(b["lr"], tried[0]):
            out.append(("extend", f"{opt} lr {tried[0] / 2:g}", opt,
                        argv_for(opt, f"{tried[0] / 2:g}")))
        elif math.isclose(b["lr"], tried[-1]):
            out.append(("extend", f"{opt} lr {tried[-1] * 2:g}", opt,
                        argv_for(opt, f"{tried[-1] * 2:g}")))
    return out


def grass_best_lr(done):
    b = best(done, "grass", where=_plain)
    return None if b is None else f"{b['lr']:g}"


def lever_rows(done):
    lr = grass_best_lr(done)
    if lr is None:
        return []
    return [
        ("levers", f"grass lr {lr}, bf16 state at rank 64 (equal bytes)", "grass",
         argv_for("grass", lr, **{"state-dtype": "bfloat16", "rank": "64"})),
        ("levers", f"grass lr {lr}, K 500 reset", "grass",
         argv_for("grass", lr, **{"refresh-every": "500"})),
        ("levers", f"grass lr {lr}, K 100 carry", "grass",
         argv_for("grass", lr, **{"refresh-every": "100", "refresh-mode": "carry"})),
        ("levers", f"grass lr {lr}, K 200 carry", "grass",
         argv_for("grass", lr, **{"refresh-mode": "carry"})),
    ]


def centre_rows(done):
    """Each optimizer at the centre of its grid (the cpu preset's best learning rate)."""
    return lr_rows(done)[:3]


def research_rows(done):
    """The research twin (full gradients, the library's row selection): the twin itself (it
    must match grass), then the residual rules, per-layer rank and bf16 state at twice the
    rank, each at equal state bytes."""
    lr = grass_best_lr(done) or "4e-2"
    r = lambda rid, **over: ("research", f"grass_ref lr {lr}{rid}", "grass_ref",
                             argv_for("grass_ref", lr, **over))
    bf16 = {"state-dtype": "bfloat16", "rank": "64"}
    return [
        r(" (the twin of grass)"),
        r(", signSGD residual x0.1", residual="sign", **{"residual-scale": "0.1"}),
        r(", Fira residual", residual="fira", **{"residual-scale": "1"}),
        r(", rank by fraction of d", **{"rank-alloc": "fraction"}),
        ("research", f"grass lr {lr}, bf16 state at rank 64 (equal bytes)", "grass",
         argv_for("grass", lr, **bf16)),
        r(", signSGD residual x0.03", residual="sign", **{"residual-scale": "0.03"}),
        r(", Fira residual x0.3", residual="fira", **{"residual-scale": "0.3"}),
        ("research", "galore lr 2e-2", "galore", argv_for("galore", "2e-2")),
    ]


def research2_rows(done):
    """After the first screen: signSGD's scale bracketed from above, and signSGD on top of bf16
    state at twice the rank (equal bytes)."""
    lr = grass_best_lr(done) or "4e-2"
    r = lambda rid, **over: ("research", f"grass_ref lr {lr}{rid}", "grass_ref",
                             argv_for("grass_ref", lr, **over))
    return [
        r(", signSGD residual x0.3", residual="sign", **{"residual-scale": "0.3"}),
        r(", bf16 rank 64, signSGD residual x0.1", residual="sign",
          **{"residual-scale": "0.1", "state-dtype": "bfloat16", "rank": "64"}),
    ]


def refresh_rows(done):
    """(b) at the current defaults (side cols): carry instead of reset, K 200 and 100."""
    lr = grass_best_lr(done) or "4e-2"
    return [("research", f"grass lr {lr}, K 200 carry", "grass",
             argv_for("grass", lr, **{"refresh-mode": "carry"})),
            ("research", f"grass lr {lr}, K 100 carry", "grass",
             argv_for("grass", lr, **{"refresh-every": "100", "refresh-mode": "carry"}))]


def residual_rows(done):
    """The lever that the cpu screen (bench/results/sweep_cpu) found strongest: FRUGAL's
    signSGD on the rows not selected, at grass's best learning rate so far."""
    lr = grass_best_lr(done) or "4e-2"
    return [("research", f"grass_ref lr {lr}, signSGD residual x0.1", "grass_ref",
             argv_for("grass_ref", lr, residual="sign", **{"residual-scale": "0.1"}))]


def seeded(phase, rid, lr, seeds, opt="grass", **over):
    """Rows of `opt` (grass, the library, or grass_ref, its research twin) at `lr` with
    options `over`, one per seed (seed 0 in `phase`, the others in the seeds phase)."""
    return [("seeds" if seed else phase, rid + (f", seed {seed}" if seed else ""), opt,
             argv_for(opt, lr, seed, **over)) for seed in seeds]


def library_residual(lr, seeds=(0, 1), **over):
    """Rows of grass (the library) with the signSGD residual x0.1 at `lr`, one per seed (seed
    0 in the library phase, the others as seeds); `over` changes more options (its rows are
    named bf16 rank 64: the only such variant)."""
    rid = f"grass lr {lr}, {'bf16 rank 64, ' if over else ''}signSGD residual x0.1"
    return seeded("library", rid, lr, seeds, residual="sign", **{"residual-scale": "0.1"}, **over)


def library_rows(done):
    """The signSGD residual in the library (grass --residual sign: X and dY handed over, the
    residual's gradient computed in chunks by libgrass) at the twin's learning rate, at grass's
    best rate if that differs, then seed 1 at 4e-2 (the close call)."""
    lr = grass_best_lr(done)
    rates = ["4e-2"] + ([lr] if lr and float(lr) != 4e-2 else [])
    return [row for r in rates for row in library_residual(r, (0,))] + library_seed_rows(done)


def library_rate_rows(done):
    """The library's signSGD residual at grass's best long rate (3e-2), seeds 0 and 1."""
    return library_residual(grass_best_lr(done) or "3e-2")


def library_bf16_rows(done):
    """The library's residual on bf16 moments at twice the rank (equal bytes: the lever that
    helped plain grass on the long preset) at 4e-2, seeds 0 and 1."""
    return library_residual("4e-2", **{"state-dtype": "bfloat16", "rank": "64"})


def library_seed_rows(done):
    """Seed 1 of the library's signSGD residual at 4e-2."""
    return library_residual("4e-2", (1,))


def seed_rows(done):
    out = []
    for opt in ("adamw", "galore", "grass"):
        b = best(done, opt, where=_plain)
        if b is not None:
            out.append(("seeds", f"{b['id']}, seed 1", opt,
                        b["argv"] + ["--seed", "1"]))
    lev = best(done, "grass", where=lambda r: r["phase"] == "levers")
    if lev is not None:
        out.append(("seeds", f"{lev['id']}, seed 1", "grass", lev["argv"] + ["--seed", "1"]))
    return out


def defaults_rows(done):
    """The defaults' goal first (cheap grass rows before the slow AdamW one): grass's grid,
    then seed 1 of grass's and AdamW's best rows."""
    out = [row for row in lr_rows(done) if row[2] == "grass"]
    for opt in ("grass", "adamw"):
        b = best(done, opt, where=_plain)
        if b is not None:
            out.append(("seeds", f"{b['id']}, seed 1", opt, b["argv"] + ["--seed", "1"]))
    return out


def research_seed_rows(done):
    """Seed 1 of AdamW, grass's defaults and the best research row (the close calls)."""
    out = []
    for opt in ("adamw", "grass"):
        b = best(done, opt, where=_plain)
        if b is not None:
            out.append(("seeds", f"{b['id']}, seed 1", opt, b["argv"] + ["--seed", "1"]))
    b = min((r for r in done.values() if r["phase"] == "research" and r.get("seed", 0) == 0
             and r["diverged_at"] is None), key=lambda r: r["final_val_loss"], default=None)
    if b is not None:
        out.append(("seeds", f"{b['id']}, seed 1", b["optimizer"], b["argv"] + ["--seed", "1"]))
    return out


def warmup_rows(done):
    """A per-row warm-up of the Adam step after a refresh (grass_ref --row-warmup W: row j's
    step scaled by min(1, t_j / W)), at grass's best plain rate: the train loss jumps after a
    reset refresh, when every zeroed row takes a full-size first step."""
    lr = grass_best_lr(done) or "3e-2"
    return [("warmup", f"grass_ref lr {lr}, row warm-up {w}", "grass_ref",
             argv_for("grass_ref", lr, **{"row-warmup": str(w)})) for w in (20, 100)]


def library_warmup_rows(done):
    """The row warm-up W = 20 in the library: on top of the best residual configuration
    (bf16 moments at rank 64 + signSGD x0.1, 4e-2) and on grass's plain configuration at its
    best rate (3e-2), then with bf16 moments at rank 64; two seeds each."""
    lr = grass_best_lr(done) or "3e-2"
    w = {"row-warmup": "20"}
    bf16 = {"state-dtype": "bfloat16", "rank": "64"}
    res = {"residual": "sign", "residual-scale": "0.1"}
    best = lambda seeds: seeded("warmup", "grass lr 4e-2, bf16 rank 64, signSGD residual x0.1, "
                                "row warm-up 20", "4e-2", seeds, **bf16, **res, **w)
    plain = lambda seeds: seeded("warmup", f"grass lr {lr}, row warm-up 20", lr, seeds, **w)
    return (best((0,)) + plain((1, 0)) + best((1,)) +
            seeded("warmup", f"grass lr {lr}, bf16 rank 64, row warm-up 20", lr, (0, 1),
                   **bf16, **w))


def warmup_plain_rows(done, widths=(20,)):
    """The row warm-up W on grass's plain configuration at its best rate, seeds 0 and 1 (the
    check before a W may become a default)."""
    lr = grass_best_lr(done) or "4e-2"
    return [row for w in widths for row in seeded("warmup", f"grass lr {lr}, row warm-up {w}",
                                                   lr, (0, 1), **{"row-warmup": str(w)})]


def warmup_short_rows(done):
    """Shorter warm-ups, W = 10 and 5, as warmup_plain (W = 20 did not help the cpu preset);
    on the long preset W = 10 only (W = 5 did not help the cpu preset either)."""
    return warmup_plain_rows(done, (10, 5) if PRESET[1] == "cpu" else (10,))


def warmup_residual_rows(done):
    """The library's signSGD residual (x0.1, f32 moments at rank 32) at 4e-2 without and with
    the row warm-up W = 20, seeds 0 and 1 (the cpu preset's check of the residual's warm-up)."""
    res = {"residual": "sign", "residual-scale": "0.1"}
    return (seeded("warmup", "grass lr 4e-2, signSGD residual x0.1", "4e-2", (0, 1), **res) +
            seeded("warmup", "grass lr 4e-2, signSGD residual x0.1, row warm-up 20", "4e-2",
                   (0, 1), **res, **{"row-warmup": "20"}))


def warmup_default_best_rows(done):
    """The best configuration (bf16 moments at rank 64 + signSGD residual x0.1, 4e-2) at the
    default row warm-up 10 instead of 20, seeds 0 and 1."""
    return seeded("warmup", "grass lr 4e-2, bf16 rank 64, signSGD residual x0.1, row warm-up 10",
                  "4e-2", (0, 1), **{"state-dtype": "bfloat16", "rank": "64",
                                     "residual": "sign", "residual-scale": "0.1",
                                     "row-warmup": "10"})


def screen_lr(done):
    """grass's rate for the screens at the row warm-up: 4e-2 on the cpu preset, grass's best
    plain rate on the long one."""
    return "4e-2" if PRESET[1] == "cpu" else (grass_best_lr(done) or "3e-2")


def rounding_rows(done):
    """bf16 moments at rank 64 (grass's f32 bytes at rank 32) in the research twin, rounded
    to nearest and stochastically: nearest rounding loses V's decay by beta2 = 0.999 (a change
    below half a bf16 ulp), which may be what bf16 moments cost on the cpu preset."""
    lr = screen_lr(done)
    over = {"state-dtype": "bfloat16", "rank": "64", "row-warmup": "10"}
    return [r for how in ("stochastic", "nearest") for r in seeded(
        "rounding", f"grass_ref lr {lr}, bf16 rank 64, row warm-up 10, {how} rounding", lr,
        (0, 1), "grass_ref", **over, **{"state-rounding": how})]


def refresh_warmup_rows(done):
    """The refresh period and carry at the default row warm-up 10 (grass, the library)."""
    lr = screen_lr(done)
    row = lambda k, mode, seeds, lr=lr: seeded(
        "refresh_warmup", f"grass lr {lr}, row warm-up 10, K {k} {mode}", lr, seeds,
        **{"row-warmup": "10", "refresh-every": k, "refresh-mode": mode})
    if PRESET[1] == "long":  # the cpu screen's best first, on two seeds; then its rate
        return row("50", "reset", (0, 1)) + row("50", "reset", (0, 1), "4e-2") + \
            row("100", "reset", (0, 1), "4e-2")
    return [r for k, mode in (("100", "reset"), ("50", "reset"), ("100", "carry"),
                              ("25", "reset"), ("50", "carry")) for r in row(k, mode, (0, 1))]


def select_warmup_rows(done):
    """The selection rule again at K 50 and the row warm-up 10 (uniform_nr was the best of
    five on the cpu preset at side auto, K 200, no warm-up): the norm-weighted ones, seeds 0, 1."""
    lr = screen_lr(done)
    return [r for method in ("multinomial_nr", "top_r")
            for r in seeded("select_warmup", f"grass lr {lr}, row warm-up 10, K 50 reset, {method}",
                            lr, (0, 1), method=method, **{"row-warmup": "10",
                                                          "refresh-every": "50"})]


def rate_warmup_rows(done):
    """Each configuration at its own best learning rate, at the row warm-up 10 (cpu preset):
    bf16 moments at rank 64 (equal bytes) were measured at rank 32's rate only, and twice the
    rank moves twice the columns per step; and K 50 (f32, rank 32) around 4e-2."""
    w = {"row-warmup": "10"}
    bf16 = {"state-dtype": "bfloat16", "rank": "64", **w}
    out = []
    for k, rates in (("50", ("2e-2", "3e-2", "4e-2")), ("200", ("2e-2", "3e-2"))):
        for lr in rates:
            out += seeded("rate_warmup", f"grass lr {lr}, bf16 rank 64, row warm-up 10, K {k}",
                          lr, (0, 1), **bf16, **{"refresh-every": k})
    for lr in ("3e-2", "6e-2"):
        out += seeded("rate_warmup", f"grass lr {lr}, row warm-up 10, K 50 reset", lr, (0, 1),
                      **w, **{"refresh-every": "50"})
    return out


def warmup_k50_rows(done):
    """The row warm-up's length again at K 50 (chosen at K 200): W 5 and 20, seeds 0, 1."""
    lr = screen_lr(done)
    return [r for w in ("5", "20")
            for r in seeded("warmup_k50", f"grass lr {lr}, row warm-up {w}, K 50 reset", lr,
                            (0, 1), **{"row-warmup": w, "refresh-every": "50"})]


def alpha_k50_rows(done):
    """The dense parameters' rate against the projected ones' at K 50 and the row warm-up 10:
    alpha 0.5 at half the rate and 0.125 at twice it (the projected step lr·alpha unchanged,
    the embedding, head and norms at half or twice the rate), seeds 0, 1."""
    lr = float(screen_lr(done))
    return [r for alpha, f in (("0.5", 0.5), ("0.125", 2.0))
            for r in seeded("alpha_k50", f"grass lr {lr * f:g}, alpha {alpha}, row warm-up 10, "
                            f"K 50 reset", f"{lr * f:g}", (0, 1), alpha=alpha,
                            **{"row-warmup": "10", "refresh-every": "50"})]


def k50_best_rows(done):
    """The best configuration (bf16 moments at rank 64 + signSGD residual x0.1, row warm-up
    10, 4e-2) at the refresh period K 50 of 0.7's defaults, seeds 0, 1."""
    return seeded("refresh_warmup", "grass lr 4e-2, bf16 rank 64, signSGD residual x0.1, "
                  "row warm-up 10, K 50", "4e-2", (0, 1),
                  **{"state-dtype": "bfloat16", "rank": "64", "residual": "sign",
                     "residual-scale": "0.1", "row-warmup": "10", "refresh-every": "50"})


def second_moment_rows(done):
    """A lighter second moment in the research twin (grass_ref --second-moment): one v per
    selected row (Adam-mini-style) or Adafactor's factors, at rank 64 (the bytes of full f32
    moments at rank 32, plus 4 bytes per row or column), at 0.7's defaults otherwise; the twin
    at the defaults beside them; seeds 0, 1. Rates: the defaults' and a notch below (twice the
    rank moves twice the rows per step)."""
    lr = screen_lr(done)
    k50 = {"row-warmup": "10", "refresh-every": "50"}
    ref = lambda rid, rate, **over: seeded(
        "second_moment", f"grass_ref lr {rate}, K 50, W 10{rid}", rate, (0, 1), "grass_ref",
        **k50, **over)
    lower = {"4e-2": "3e-2", "3e-2": "2e-2"}.get(lr, f"{float(lr) * 0.75:g}")
    row, factored = ({"rank": "64", "second-moment": sm} for sm in ("row", "factored"))
    return (ref(", rank 64, v per row", lr, **row) +
            ref(" (the twin of the defaults)", lr) +
            ref(", rank 64, v per row", lower, **row) +
            ref(", rank 64, factored v", lr, **factored))


def cyclic_rows(done):
    """Random reshuffling instead of independent refreshes (grass_ref --method cyclic: every
    unit once per ceil(d/r) refreshes) at 0.7's defaults otherwise, seeds 0, 1; the twin at the
    defaults (second_moment's rows) is the baseline. On the cpu preset also K 25 and 100."""
    lr = screen_lr(done)
    ks = ("50", "25", "100") if PRESET[1] == "cpu" else ("50",)
    return [r for k in ks for r in seeded(
        "cyclic", f"grass_ref lr {lr}, K {k}, W 10, cyclic", lr, (0, 1), "grass_ref",
        method="cyclic", **{"row-warmup": "10", "refresh-every": k})]


def moment_bytes_rows(done):
    """Where bf16 moments lose on the cpu preset: f32 moments at rank 64 (twice the bytes: a
    diagnosis, not a candidate) against bf16 M beside f32 V at rank 42 (the twin; 6 bytes
    per element: rank 32's bytes), at 0.7's defaults otherwise, seeds 0, 1."""
    lr = screen_lr(done)
    k50 = {"row-warmup": "10", "refresh-every": "50"}
    return (seeded("moment_bytes", f"grass lr {lr}, K 50, W 10, f32 rank 64 (2x bytes)", lr,
                   (0, 1), rank="64", **k50) +
            seeded("moment_bytes", f"grass_ref lr {lr}, K 50, W 10, rank 42, bf16 M, f32 V", lr,
                   (0, 1), "grass_ref", rank="42", **k50,
                   **{"first-moment-dtype": "bfloat16"}))


def rank_alpha_rows(done):
    """bf16 moments at rank 64 (equal bytes) with the projected step scaled down by alpha
    instead of the learning rate: on the cpu preset f32 at rank 64 loses to rank 32 like
    bf16 at rank 64 does (so it is the rank, not the precision), and a lower rate also slows
    the dense parameters, whose rate is at its optimum (alpha_k50). alpha 0.125 and 0.177
    (0.25 / sqrt 2: the projected update's norm of rank 32) at the defaults' rate, K 50, W 10,
    then alpha 0.177 at 5e-2 and 3e-2, seeds 0, 1 (long: alpha 0.177 at 4e-2, the defaults'
    best rate at K 50, then at 5e-2 and 6e-2)."""
    grid = [(screen_lr(done), "0.177"), (screen_lr(done), "0.125"), ("5e-2", "0.177"),
            ("3e-2", "0.177")] if PRESET[1] == "cpu" else [("4e-2", "0.177"), ("5e-2", "0.177"),
                                                            ("6e-2", "0.177")]
    return [r for lr, a in grid for r in seeded(
        "rank_alpha", f"grass lr {lr}, K 50, W 10, bf16 rank 64, alpha {a}", lr, (0, 1),
        alpha=a, rank="64", **{"state-dtype": "bfloat16", "row-warmup": "10",
                               "refresh-every": "50"})]


def seed2_rows(done):
    """A third seed of the close call of 0.8's defaults on the long preset: grass at its best
    rate (5e-2; seed 1 was flat from 4e-2 to 6e-2, seed 0 3% lower at 5e-2 than beside it)
    and AdamW at its best (2e-3)."""
    over = {"row-warmup": "10", "refresh-every": "50", "state-dtype": "bfloat16", "rank": "64",
            "alpha": "0.177"}
    return [("seeds", "grass lr 5e-2, K 50, W 10, bf16 rank 64, alpha 0.177, seed 2", "grass",
             argv_for("grass", "5e-2", 2, **over)),
            ("seeds", "adamw lr 2e-3, seed 2", "adamw", argv_for("adamw", "2e-3", 2))]


PHASES = {"centre": centre_rows, "lr": lr_rows, "extend": extend_rows, "levers": lever_rows,
          "research": research_rows, "residual": residual_rows, "research2": research2_rows, "refresh": refresh_rows,
          "research_seeds": research_seed_rows, "defaults": defaults_rows,
          "library": library_rows, "library_seed": library_seed_rows,
          "library_rate": library_rate_rows, "library_bf16": library_bf16_rows,
          "seeds": seed_rows, "warmup": warmup_rows, "library_warmup": library_warmup_rows,
          "warmup_plain": warmup_plain_rows, "warmup_residual": warmup_residual_rows,
          "warmup_short": warmup_short_rows, "warmup_default_best": warmup_default_best_rows,
          "rounding": rounding_rows, "refresh_warmup": refresh_warmup_rows,
          "select_warmup": select_warmup_rows, "rate_warmup": rate_warmup_rows,
          "warmup_k50": warmup_k50_rows, "alpha_k50": alpha_k50_rows,
          "k50_best": k50_best_rows, "second_moment": second_moment_rows,
          "cyclic": cyclic_rows, "moment_bytes": moment_bytes_rows,
          "rank_alpha": rank_alpha_rows, "seed2": seed2_rows}


def plan(phases, done):
    rows, seen = [], set()
    for ph in phases:
        for phase, rid, opt, argv in PHASES[ph](done):
            argv = canonical(argv)
            if command(argv) not in seen:
                seen.add(command(argv))
                rows.append((phase, rid, opt, argv, command(argv)))
    return rows


def write_table(out, done):
    adamw = best(done, "adamw")
    galore = best(done, "galore")
    a = adamw["final_val_loss"] if adamw else float("nan")
    g = galore["final_val_loss"] if galore else float("nan")
    lines = ["| phase | configuration | seed | val loss | / best AdamW | / best GaLore | "
             "train loss | optimizer state, bytes | wall s | command |", "|" + " --- |" * 10]
    for r in done.values():
        val = f"{r['final_val_loss']:.4f}" if r["diverged_at"] is None else \
            f"diverged at {r['diverged_at']}"
        lines.append(
            f"| {r['phase']} | {r['id']} | {r.get('seed', 0)} | {val} | "
            f"{r['final_val_loss'] / a:.4f} | {r['final_val_loss'] / g:.4f} | "
            f"{r['train_loss']:.4f} | {r['state_bytes']:,} | {r['wall_s']:.0f} | "
            f"`{r['command']}` |")
    what = ("`--preset long`: 1500 steps x 32 x 128 bytes" if PRESET[1] == "long" else
            "`--preset cpu`: 300 steps x 16 x 64 bytes")
    head = (f"Sweep on the trainer's {what}, 0.85M parameters: {len(done)} runs. Ratios are to the best seed-0 AdamW "
            f"({a:.4f}) and GaLore ({g:.4f}) rows.\n\n")
    (out / "sweep.md").write_text(head + "\n".join(lines) + "\n")


# What the releases since the measurements of GRASS changed in grass's defaults: 0.6 the row
# warm-up, 0.7 the refresh period, 0.8 bf16 moments at twice the rank (the trainer's presets:
# 64) with alpha 0.177.
SHIPPED = {"row-warmup": "10", "refresh-every": "50", "state-dtype": "bfloat16", "rank": "64",
           "alpha": "0.177"}


def _defaults(r):
    """A row of grass as shipped (GRASS's options with SHIPPED's changes)."""
    opts = dict(zip(r["argv"][::2], r["argv"][1::2]))
    return (r["optimizer"] == "grass" and "--residual" not in opts
            and all(opts.get(f"--{k}") == v for k, v in dict(GRASS, **SHIPPED).items()))


def headline(done):
    """[(label, row)]: AdamW, GaLore and grass's defaults at their best learning rates (grass
    without the row warm-up where no run of the current defaults exists), and the best grass
    configuration of the other phases (seed 0)."""
    out = []
    for label, opt in (("AdamW", "adamw"), ("GaLore", "galore"), ("grass defaults", "grass")):
        b = (opt == "grass" and best_on_seeds(done, _defaults)) or best(done, opt, where=_plain)
        if b is not None:
            out.append((f"{label}, lr {b['lr']:g}", b))
    # the library's best configuration (the research twin's rows only where the library has
    # none beyond its defaults)
    for opts in (("grass",), ("grass", "grass_ref")):
        b = min((r for r in done.values() if r["optimizer"] in opts and not _plain(r)
                 and r["diverged_at"] is None and r.get("seed", 0) == 0),
                key=lambda r: r["final_val_loss"], default=None)
        if b is not None:
            out.append((f"best grass: {b['id']}", b))
            break
    return out


def _as_planned(cmd):
    """A run folder's command as the plan writes it now: options in canonical order, and the
    row warm-up 0 that grass's rows ran with before the option existed."""
    argv = cmd.split()[3:]
    if argv[argv.index("--optimizers") + 1] in ("grass", "grass_ref") and \
            "--row-warmup" not in argv:
        argv += ["--row-warmup", "0"]
    return command(canonical(argv))


def in_progress(out, done):
    """[(label, row)] of the runs started but not finished: their curves so far, from their
    last checkpoint (every 150 steps)."""
    ids = {cmd: rid for _, rid, _, _, cmd in plan(list(PHASES), done)}
    rows = []
    for folder in sorted((out / "runs").glob("*")):
        try:
            cmd = (folder / "command.txt").read_text().strip()
        except OSError:
            continue
        if cmd in done or _as_planned(cmd) in done:
            continue
        for prog in (folder / "ckpt").glob("*/progress.json"):
            pr = json.loads(prog.read_text())
            if pr["val"]:
                rows.append((f"{ids.get(cmd, cmd)} (running: step {pr['step']})",
                             {"train_curve": pr["train_loss"], "val_curve": pr["val"],
                              "state_bytes": None, "step": pr["step"], "command": cmd}))
    return rows


def plot(done, path, title, running=()):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, r in list(headline(done)) + list(running):
        y = np.asarray(r.get("train_curve", []), np.float64)
        if y.size:
            w = max(1, min(50, y.size // 10))
            ax_t.plot(np.arange(w, y.size + 1), np.convolve(y, np.ones(w) / w, "valid"),
                      label=label)
        s_, v = zip(*r["val_curve"])
        mib = "" if r["state_bytes"] is None else f" ({r['state_bytes'] / 2**20:.2f} MiB state)"
        ax_v.plot(s_, v, marker="o", ms=3, label=label + mib,
                  linestyle="--" if r["state_bytes"] is None else "-")
    ax_t.set(title="train loss (moving average)", xlabel="step", ylabel="nats / byte")
    ax_v.set(title="validation loss", xlabel="step", ylabel="nats / byte")
    for ax in (ax_t, ax_v):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    lo = min((min(v for _, v in r["val_curve"]) for _, r in list(headline(done)) + list(running)),
             default=None)
    if lo is not None:
        ax_v.set_ylim(lo - 0.05, lo + 0.6)
        ax_t.set_ylim(lo - 0.15, lo + 0.6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_folder(out, cmd):
    return out / "runs" / hashlib.sha1(cmd.encode()).hexdigest()[:10]


def claimed(out, cmd):
    """Whether another live sweep process is running this row (its pid in runs/<n>/claim):
    several sweep processes can share one plan."""
    try:
        pid = int((run_folder(out, cmd) / "claim").read_text())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def run_row(train, out, phase, rid, opt, argv, cmd):
    folder = run_folder(out, cmd)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "claim").write_text(str(os.getpid()))
    (folder / "command.txt").write_text(cmd + "\n")
    ckpt = folder / "ckpt"
    if any(ckpt.glob("*/progress.json")):  # a checkpoint to continue from
        targs = ["--resume", str(ckpt)]
    else:
        targs = argv + ["--save", str(ckpt)]
    targs += ["--save-every", SAVE_EVERY, "--no-progress", "--out", str(folder)]
    t0 = time.time()
    code = train.main(targs)
    if code != 0:
        print(f"  failed with status {code}", flush=True)
        return None
    res = json.loads((folder / "results.json").read_text())
    r = res["results"][0]
    return {"phase": phase, "id": rid, "command": cmd, "argv": argv, "optimizer": opt,
            "seed": res["config"]["seed"],
            **{k: r[k] for k in ("final_val_loss", "bits_per_byte", "train_loss",
                                 "state_bytes", "weight_grad_bytes", "tokens_per_s",
                                 "wall_s", "diverged_at", "rank", "lr")},
            "val_curve": r["val_curve"],
            "train_curve": [round(x, 4) for x in r["train_curve"]],
            "seconds": time.time() - t0}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phases", default="lr,extend,levers,seeds")
    p.add_argument("--preset", default="long", choices=("long", "cpu"),
                   help="the trainer's preset (cpu: a 20x cheaper screen of the levers)")
    p.add_argument("--out", help="default: bench/results/sweep_<preset>")
    p.add_argument("--list", action="store_true", help="print the rows known now and exit")
    p.add_argument("--table", action="store_true", help="rewrite sweep.md, run nothing")
    p.add_argument("--plot", help="write the curves of AdamW, GaLore, grass's defaults and the "
                                  "best grass configuration (best learning rates) to this PNG")
    args = p.parse_args()
    PRESET[1] = args.preset
    args.out = args.out or str(HERE / "results" / f"sweep_{args.preset}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "rows.jsonl"
    done = load_done(log)
    phases = args.phases.split(",")
    if args.list:
        for ph, rid, _, _, cmd in plan(phases, done):
            print(f"{'done' if cmd in done else '    '} {ph:8s} {rid:50s} {cmd}")
        return 0
    if args.table or args.plot:
        write_table(out, done)
        print(f"wrote {out / 'sweep.md'}")
        if args.plot:
            running = in_progress(out, done)
            plot(done, args.plot, f"0.85M-parameter byte LM, --preset {PRESET[1]}, equal "
                                  f"optimizer-state bytes for grass and GaLore", running)
            print(f"wrote {args.plot}")
            for label, r in running:
                print(f"running: {label}: val {r['val_curve']}")
        return 0
    from grass_jax import train
    failed = set()
    while True:  # the plan grows as rows finish (extend, levers and seeds depend on them)
        done.update(load_done(log))  # rows other sweep processes finished
        todo = [row for row in plan(phases, done) if row[4] not in done and row[4] not in failed
                and not claimed(out, row[4])]
        if not todo:
            break
        ph, rid, opt, argv, cmd = todo[0]
        print(f"[{len(done) + 1}, {len(todo)} to go] {rid}: {cmd}", flush=True)
        rec = run_row(train, out, ph, rid, opt, argv, cmd)
        if rec is None:
            failed.add(cmd)
            continue
        with log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[cmd] = rec
        write_table(out, done)
        print(f"  val {rec['final_val_loss']:.4f} in {rec['seconds']:.0f} s", flush=True)
    write_table(out, done)
    print(f"wrote {out / 'sweep.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
