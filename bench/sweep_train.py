"""Quality sweep of the trainer (`python -m grass_jax.train`): each optimizer's learning rate,
and grass's options (method x p x scaling x K x alpha x refresh_mode x side x state dtype), on
the same model, initial weights and data order.

    python bench/sweep_train.py                         # every phase, in order
    python bench/sweep_train.py --phases lr,paper       # some phases
    python bench/sweep_train.py --list                  # the rows and their commands
    python bench/sweep_train.py --preset gpu-small      # any trainer option passes through

Each row is one single-optimizer run of the trainer; its results are appended to
<out>/rows.jsonl as soon as it finishes, and rows already there are not run again, so the
sweep can be stopped and continued. <out>/sweep.md is rewritten after every row: one line per
configuration with its final validation loss, the ratio to the best AdamW run, the optimizer
state bytes and the command that reproduces it.

Phases (in priority order):
  lr       the learning-rate sweep of adamw, GaLore and grass as shipped (its defaults)
  paper    the GRASS paper's recipe (lr 1e-2, alpha 0.25, K 200, reset) for each method
  carry    frequent refreshes that carry the Adam state of rows that stay selected
  options  p, alpha, K and the learning rate around the best recipe
  memory   side and state dtype: bf16 moments at twice the rank (equal state bytes)
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The selection options every grass row was measured under where the row does not set them
# (grass_adamw's defaults before the sweep moved them): each command names them, so that it
# reproduces its row whatever the defaults are now.
MEASURED_UNDER = (("--method", "multinomial_nr"), ("--scaling", "unbiased"), ("--alpha", "1"),
                  ("--side", "auto"))


def pinned(opt, argv):
    """argv plus, for grass, the MEASURED_UNDER options it leaves out."""
    if opt != "grass":
        return list(argv)
    return list(argv) + [x for k, v in MEASURED_UNDER if k not in argv for x in (k, v)]


def rows():
    """[(phase, id, optimizer, trainer options)] in the order they run."""
    out = []
    add = lambda phase, rid, opt, argv: out.append((phase, rid, opt, pinned(opt, argv)))
    # The most telling rows first, so that a sweep cut short has them.
    for opt, lr in (("adamw", "3e-3"), ("galore", "1e-2"), ("grass", "3e-3"),
                    ("adamw", "1e-3"), ("adamw", "6e-3"), ("galore", "2e-2"),
                    ("grass", "1e-2"), ("adamw", "2e-3"), ("galore", "4e-2"),
                    ("grass", "1e-3")):
        add("lr", f"{opt}{' former defaults' if opt == 'grass' else ''} lr {lr}", opt, ["--lr", lr])
    recipe = lambda lr, method, scaling: ["--lr", lr, "--alpha", "0.25", "--refresh-every",
                                          "200", "--refresh-mode", "reset", "--method", method,
                                          "--scaling", scaling]
    add("paper", "uniform_nr none paper recipe", "grass", recipe("1e-2", "uniform_nr", "none"))
    add("paper", "uniform_nr none paper recipe, lr 2e-2", "grass",
        recipe("2e-2", "uniform_nr", "none"))
    add("lr", "galore lr 8e-2", "galore", ["--lr", "8e-2"])
    add("paper", "uniform_nr none paper recipe, lr 4e-2", "grass",
        recipe("4e-2", "uniform_nr", "none"))
    for method, scaling in (("top_r", "none"), ("multinomial_nr", "unbiased")):
        add("paper", f"{method} {scaling} paper recipe", "grass",
            recipe("1e-2", method, scaling))
    # Around the best learning rate of the paper's recipe (4e-2): more frequent refreshes,
    # with and without carrying the Adam state of rows that stay selected.
    with_k = lambda k, mode, method="uniform_nr": (
        recipe("4e-2", method, "none")[:5] + [k, "--refresh-mode", mode]
        + recipe("4e-2", method, "none")[8:])
    add("carry", "uniform_nr none lr 4e-2 K 50 carry", "grass", with_k("50", "carry"))
    add("carry", "uniform_nr none lr 4e-2 K 20 carry", "grass", with_k("20", "carry"))
    add("options", "uniform_nr none lr 4e-2 K 50 reset", "grass", with_k("50", "reset"))
    add("lr", "uniform_nr none paper recipe, lr 8e-2", "grass",
        recipe("8e-2", "uniform_nr", "none"))
    add("memory", "uniform_nr none lr 4e-2, bf16 state at rank 2x", "grass",
        recipe("4e-2", "uniform_nr", "none") + ["--state-dtype", "bfloat16", "--rank", "2x"])
    for alpha in ("0.5", "0.125"):  # the projected weights' step apart from the dense ones'
        add("options", f"uniform_nr none lr 4e-2 alpha {alpha}", "grass",
            ["--lr", "4e-2", "--alpha", alpha] + recipe("4e-2", "uniform_nr", "none")[4:])
    add("options", "multinomial_nr none lr 4e-2", "grass",
        recipe("4e-2", "multinomial_nr", "none"))
    add("options", "multinomial_nr unbiased lr 4e-2", "grass",
        recipe("4e-2", "multinomial_nr", "unbiased"))
    add("options", "multinomial_nr none lr 4e-2 p 1", "grass",
        recipe("4e-2", "multinomial_nr", "none") + ["--power", "1"])
    add("carry", "multinomial_nr none lr 4e-2 K 50 carry", "grass",
        with_k("50", "carry", "multinomial_nr"))
    add("paper", "multinomial unbiased paper recipe", "grass",
        recipe("1e-2", "multinomial", "unbiased"))
    add("options", "uniform_nr unbiased lr 4e-2", "grass",
        recipe("4e-2", "uniform_nr", "unbiased"))
    add("memory", "uniform_nr none lr 4e-2, side cols", "grass",
        recipe("4e-2", "uniform_nr", "none") + ["--side", "cols"])
    # side cols keeps r x 352 moments for the MLP's up projections (auto: r x 128); rank 21
    # brings its state back to the bytes of the others (0.66x the preset's rank of 32).
    add("memory", "uniform_nr none lr 4e-2, side cols at equal bytes", "grass",
        recipe("4e-2", "uniform_nr", "none") + ["--side", "cols", "--rank", "0.66x"])
    add("memory", "uniform_nr none lr 4e-2, side cols, bf16 state, equal bytes", "grass",
        recipe("4e-2", "uniform_nr", "none") + ["--side", "cols", "--state-dtype", "bfloat16",
                                                "--rank", "1.31x"])
    return out


def _resolve(argv, rank):
    """'--rank 2x' means twice the preset's (or given) rank."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--rank" and out[i + 1].endswith("x"):
            out[i + 1] = str(int(float(out[i + 1][:-1]) * rank))
    return out


def command(opt, argv, extra):
    return " ".join(["python -m grass_jax.train", "--optimizers", opt] + extra + argv)


def load_done(path):
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["command"]] = rec
    return done


def write_table(out, plan, done, extra):
    def best(opt):
        return min((r["final_val_loss"] for r in done.values()
                    if r["optimizer"] == opt and r["diverged_at"] is None),
                   default=float("nan"))
    adamw, galore = best("adamw"), best("galore")
    lines = ["| phase | configuration | val loss | / best AdamW | / best GaLore | bits/byte | "
             "train loss | optimizer state, bytes | command |", "|" + " --- |" * 9]
    for phase, rid, opt, cmd in plan:
        r = done.get(cmd)
        if r is None:
            continue
        val = f"{r['final_val_loss']:.4f}" if r["diverged_at"] is None else \
            f"diverged at {r['diverged_at']}"
        lines.append(
            f"| {phase} | {rid} | {val} | {r['final_val_loss'] / adamw:.4f} | "
            f"{r['final_val_loss'] / galore:.4f} | {r['bits_per_byte']:.4f} | "
            f"{r['train_loss']:.4f} | {r['state_bytes']:,} | `{cmd}` |")
    head = (f"Trainer sweep: {len(done)} runs, options common to every row: "
            f"`{' '.join(extra) or '(the cpu preset)'}`. One seed per row.\n\n")
    (out / "sweep.md").write_text(head + "\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phases", default="lr,paper,carry,options,memory")
    p.add_argument("--only", help="run only the rows whose configuration contains this text")
    p.add_argument("--out", default=str(HERE / "results" / "sweep_train"))
    p.add_argument("--list", action="store_true", help="print the rows and exit")
    p.add_argument("--table", action="store_true",
                   help="rewrite sweep.md from the rows already run, run nothing")
    args, extra = p.parse_known_args()
    from grass_jax import train

    phases = args.phases.split(",")
    given = dict(zip(extra[::2], extra[1::2]))
    preset = given.get("--preset", "cpu")
    rank = int(given.get("--rank", train.PRESETS[preset]["rank"]))
    plan = [(ph, rid, opt, command(opt, _resolve(argv, rank), extra))
            for ph, rid, opt, argv in rows() if ph in phases and
            (args.only is None or args.only in rid)]
    if args.list:
        for ph, rid, _, cmd in plan:
            print(f"{ph:8s} {rid:45s} {cmd}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "rows.jsonl"
    done = load_done(log)
    if args.table:
        plan = [row for row in plan if row[3] in done]
        write_table(out, plan, done, extra)
        print(f"wrote {out / 'sweep.md'}")
        return 0
    for i, (ph, rid, opt, cmd) in enumerate(plan):
        if cmd in done:
            continue
        argv = cmd.split()[3:] + ["--no-progress", "--out", str(out / "runs" / f"{i:03d}")]
        t0 = time.time()
        print(f"[{i + 1}/{len(plan)}] {rid}: {cmd}", flush=True)
        code = train.main(argv)
        if code != 0:
            print(f"  failed with status {code}", flush=True)
            continue
        res = json.loads((out / "runs" / f"{i:03d}" / "results.json").read_text())
        r = res["results"][0]
        rec = {"phase": ph, "id": rid, "command": cmd, "optimizer": opt,
               **{k: r[k] for k in ("final_val_loss", "bits_per_byte", "train_loss",
                                    "state_bytes", "weight_grad_bytes", "tokens_per_s",
                                    "wall_s", "diverged_at", "rank", "lr")},
               "val_curve": r["val_curve"], "seconds": time.time() - t0}
        with log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[cmd] = rec
        write_table(out, plan, done, extra)
        print(f"  val {r['final_val_loss']:.4f} in {time.time() - t0:.0f} s", flush=True)
    write_table(out, plan, done, extra)
    print(f"wrote {out / 'sweep.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
