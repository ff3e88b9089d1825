#!/usr/bin/env python3
"""Records a run of scripts/gpu_all.sh in BENCHMARKS.md: reads what the run wrote to its $OUT
(summary.md, the part fragments part1_correctness.md .. part4_extra.md, and env.txt from
logs.tgz) and inserts one section under "## Runs", newest first. Parts of the same run that
came back from separate calls (GPU_ALL_PARTS) can be given as several directories.

    python3 scripts/gpu_record.py OUT_DIR [OUT_DIR...] [--command CMD] [--print]

--print writes the section to stdout instead. A dry run's fragments (GPU_ALL_DRY=1) are never
recorded: they hold no GPU measurement (--print still shows them).
"""
import argparse
import os
import re
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ["part1_correctness.md", "part2_bench.md", "part3_memory_13b.md", "part4_extra.md"]


def env_txt(d):
    path = os.path.join(d, "logs.tgz")
    if not os.path.exists(path):
        return ""
    with tarfile.open(path) as t:
        for m in t.getmembers():
            if os.path.basename(m.name) == "env.txt":
                return t.extractfile(m).read().decode(errors="replace")
    return ""


def section(dirs, command):
    summaries = [open(os.path.join(d, "summary.md")).read() for d in dirs
                 if os.path.exists(os.path.join(d, "summary.md"))]
    if not summaries:
        sys.exit(f"no summary.md in {', '.join(dirs)}: not a gpu_all.sh output directory")
    first = summaries[0]
    when = re.search(r"gpu_all\.sh: (.+ UTC)", first)
    commit = re.search(r"^commit ([0-9a-f]+)", first, re.M)
    env = "\n".join(env_txt(d) for d in dirs)
    card = re.search(r"(NVIDIA [A-Z][\w ]*?\d+\w*(?: [\w]+)*?)\s{2,}", env)
    driver = re.search(r"Driver Version:\s*(\S+)", env)
    cuda = re.search(r"CUDA Version:\s*(\S+)", env)
    versions = [ln.strip() for ln in env.splitlines() if re.match(r"(torch|jax|python) ", ln)]
    lines = [f"### {when.group(1) if when else '(date unknown)'}: "
             f"{card.group(1).strip() if card else 'card unknown'}, commit {commit.group(1) if commit else '?'}",
             ""]
    lines.append(f"Command: `{command}`. Driver {driver.group(1) if driver else '?'}, "
                 f"CUDA {cuda.group(1) if cuda else '?'}; {'; '.join(versions) or 'versions in env.txt'}.")
    for s in summaries:
        total = re.search(r"^total: .*$", s, re.M)
        kern = re.search(r"^kernels: .*$", s, re.M)
        if total:
            lines += ["", total.group(0)] + (["", kern.group(0)] if kern else [])
    lines.append("")
    dry = any("dry run: yes" in s for s in summaries)
    found = 0
    for name in PARTS:
        for d in dirs:
            p = os.path.join(d, name)
            if os.path.exists(p):
                text = open(p).read().strip()
                dry |= "DRY RUN" in text
                lines += [text, ""]
                found += 1
                break
    if not found:
        sys.exit(f"no part fragments ({', '.join(PARTS)}) in {', '.join(dirs)}")
    return "\n".join(lines).rstrip() + "\n", dry


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--command", default="bash scripts/gpu_all.sh")
    ap.add_argument("--print", action="store_true", help="write the section to stdout only")
    ap.add_argument("--file", default=os.path.join(ROOT, "BENCHMARKS.md"))
    a = ap.parse_args()
    text, dry = section(a.dirs, a.command)
    if a.print:
        sys.stdout.write(text)
        return 0
    if dry:
        sys.exit("a dry run's fragments hold no GPU measurement: not recorded (use --print to see them)")
    doc = open(a.file).read()
    head, sep, runs = doc.partition("\n## Runs\n")
    if not sep:
        sys.exit(f"{a.file} has no '## Runs' heading")
    runs = re.sub(r"^\s*None yet\.\s*", "", runs)
    with open(a.file, "w") as f:
        f.write(head + sep + "\n" + text + "\n" + runs.lstrip("\n"))
    print(f"recorded in {a.file}: {text.splitlines()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
