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

PAPER = ["--lr", "1e-2", "--alpha", "0.25", "--refresh-every", "200", "--refresh-mode", "reset"]


def rows():
    """[(phase, id, optimizer, trainer options)] in the order they run."""
    out = []
    add = lambda phase, rid, opt, argv: out.append((phase, rid, opt, list(argv)))
    for lr in ("1e-3", "2e-3", "3e-3", "6e-3", "1e-2"):
        add("lr", f"adamw lr {lr}", "adamw", ["--lr", lr])
    for lr in ("3e-3", "1e-2", "2e-2", "4e-2"):
        add("lr", f"galore lr {lr}", "galore", ["--lr", lr])
    for lr in ("1e-3", "3e-3", "1e-2"):
        add("lr", f"grass defaults lr {lr}", "grass", ["--lr", lr])
    for method, scaling in (("uniform_nr", "none"), ("top_r", "none"),
                            ("multinomial_nr", "unbiased"), ("multinomial_nr", "none"),
                            ("multinomial", "unbiased"), ("uniform_nr", "unbiased")):
        add("paper", f"{method} {scaling} paper recipe", "grass",
            PAPER + ["--method", method, "--scaling", scaling])
    for k in ("50", "20"):
        for method, scaling in (("uniform_nr", "none"), ("multinomial_nr", "none")):
            add("carry", f"{method} {scaling} K {k} carry", "grass",
                ["--lr", "1e-2", "--alpha", "0.25", "--refresh-every", k, "--refresh-mode",
                 "carry", "--method", method, "--scaling", scaling])
    base = ["--method", "uniform_nr", "--scaling", "none", "--refresh-mode", "reset"]
    for lr, alpha in (("2e-2", "0.25"), ("5e-3", "0.25"), ("1e-2", "0.5"), ("3e-3", "1")):
        add("options", f"uniform_nr none lr {lr} alpha {alpha}", "grass",
            base + ["--lr", lr, "--alpha", alpha, "--refresh-every", "200"])
    for k in ("100", "50"):
        add("options", f"uniform_nr none K {k} reset", "grass",
            base + ["--lr", "1e-2", "--alpha", "0.25", "--refresh-every", k])
    add("options", "multinomial_nr none p 1 paper recipe", "grass",
        PAPER + ["--method", "multinomial_nr", "--scaling", "none", "--power", "1"])
    add("memory", "uniform_nr none bf16 state rank 2x", "grass",
        PAPER + ["--method", "uniform_nr", "--scaling", "none", "--state-dtype", "bfloat16",
                 "--rank", "2x"])
    add("memory", "uniform_nr none side cols", "grass",
        PAPER + ["--method", "uniform_nr", "--scaling", "none", "--side", "cols"])
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
    best_adamw = min((r["final_val_loss"] for r in done.values()
                      if r["optimizer"] == "adamw" and r["diverged_at"] is None),
                     default=float("nan"))
    lines = ["| phase | configuration | val loss | / best AdamW | bits/byte | train loss | "
             "optimizer state | tokens/s | command |", "|" + " --- |" * 9]
    for phase, rid, opt, cmd in plan:
        r = done.get(cmd)
        if r is None:
            continue
        val = f"{r['final_val_loss']:.4f}" if r["diverged_at"] is None else \
            f"diverged at {r['diverged_at']}"
        lines.append(
            f"| {phase} | {rid} | {val} | {r['final_val_loss'] / best_adamw:.4f} | "
            f"{r['bits_per_byte']:.4f} | {r['train_loss']:.4f} | {r['state_bytes']:,} | "
            f"{r['tokens_per_s']:,.0f} | `{cmd}` |")
    head = (f"Trainer sweep: {len(done)} runs, options common to every row: "
            f"`{' '.join(extra) or '(the cpu preset)'}`.\n\n")
    (out / "sweep.md").write_text(head + "\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phases", default="lr,paper,carry,options,memory")
    p.add_argument("--only", help="run only the rows whose configuration contains this text")
    p.add_argument("--out", default=str(HERE / "results" / "sweep_train"))
    p.add_argument("--list", action="store_true", help="print the rows and exit")
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
