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

def rows():
    """[(phase, id, optimizer, trainer options)] in the order they run."""
    out = []
    add = lambda phase, rid, opt, argv: out.append((phase, rid, opt, list(argv)))
    # The most telling rows first, so that a sweep cut short has them.
    for opt, lr in (("adamw", "3e-3"), ("galore", "1e-2"), ("grass", "3e-3"),
                    ("adamw", "1e-3"), ("adamw", "6e-3"), ("galore", "2e-2"),
                    ("grass", "1e-2"), ("adamw", "2e-3"), ("galore", "4e-2"),
                    ("grass", "1e-3")):
        add("lr", f"{opt}{' defaults' if opt == 'grass' else ''} lr {lr}", opt, ["--lr", lr])
    recipe = lambda lr, method, scaling: ["--lr", lr, "--alpha", "0.25", "--refresh-every",
                                          "200", "--refresh-mode", "reset", "--method", method,
                                          "--scaling", scaling]
    add("paper", "uniform_nr none paper recipe", "grass", recipe("1e-2", "uniform_nr", "none"))
    add("paper", "uniform_nr none paper recipe, lr 2e-2", "grass",
        recipe("2e-2", "uniform_nr", "none"))
    add("lr", "galore lr 8e-2", "galore", ["--lr", "8e-2"])
    add("paper", "uniform_nr none paper recipe, lr 4e-2", "grass",
        recipe("4e-2", "uniform_nr", "none"))
    for method, scaling in (("top_r", "none"), ("multinomial_nr", "unbiased"),
                            ("multinomial", "unbiased")):
        add("paper", f"{method} {scaling} paper recipe", "grass",
            recipe("1e-2", method, scaling))
    carry = lambda lr, k, method: ["--lr", lr, "--alpha", "0.25", "--refresh-every", k,
                                   "--refresh-mode", "carry", "--method", method,
                                   "--scaling", "none"]
    add("carry", "uniform_nr none K 50 carry", "grass", carry("1e-2", "50", "uniform_nr"))
    add("carry", "uniform_nr none K 20 carry", "grass", carry("1e-2", "20", "uniform_nr"))
    add("options", "uniform_nr none K 50 reset", "grass",
        recipe("1e-2", "uniform_nr", "none")[:5] + ["50"] + recipe("1e-2", "uniform_nr",
                                                                    "none")[6:])
    add("options", "multinomial_nr none paper recipe", "grass",
        recipe("1e-2", "multinomial_nr", "none"))
    add("options", "uniform_nr none paper recipe, alpha 0.5", "grass",
        ["--lr", "1e-2", "--alpha", "0.5"] + recipe("1e-2", "uniform_nr", "none")[4:])
    add("carry", "multinomial_nr none K 50 carry", "grass",
        carry("1e-2", "50", "multinomial_nr"))
    add("memory", "uniform_nr none bf16 state rank 2x", "grass",
        recipe("1e-2", "uniform_nr", "none") + ["--state-dtype", "bfloat16", "--rank", "2x"])
    add("options", "multinomial_nr none p 1 paper recipe", "grass",
        recipe("1e-2", "multinomial_nr", "none") + ["--power", "1"])
    add("options", "uniform_nr unbiased paper recipe", "grass",
        recipe("1e-2", "uniform_nr", "unbiased"))
    add("memory", "uniform_nr none side cols", "grass",
        recipe("1e-2", "uniform_nr", "none") + ["--side", "cols"])
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
