#!/usr/bin/env python3
"""Runs every code snippet of the READMEs and docs/ as a reader would, so that none of them
drifts from the library.

Fenced blocks are picked by their language:
  ```c       compiled with the README's plain-cc line (-Iinclude -Ltarget/release -lgrass) and run
  ```cpp     the same with c++ -std=c++17 and -Ibindings/cpp, then run
  ```python  run with the current python (scripts/test.sh: the .venv with grass_jax installed)
             and PYTHONPATH=bindings/torch, from the repository root
Other languages (sh, cmake, text) are not run. A block whose info string carries the word
`fragment` (```python fragment) is a piece of a larger program and is only listed, not run;
use it sparingly, for code that needs what a reader supplies (their model, a GPU). A word
`requires=MODULE` (```python requires=torch) runs the block where that Python module can be
imported and reports it as skipped, with the reason, where it cannot.

Python snippets see 4 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=4), so
the data-parallel recipe runs on a machine without accelerators.

Usage: python scripts/check_snippets.py [FILE.md ...]   (default: every README and docs/*.md)
Needs target/release/libgrass.so (cargo build --release). Exits non-zero when a snippet fails.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(`{3,})([^`\n]*)\n(.*?)^\1[ \t]*$", re.M | re.S)
TIMEOUT_S = 600


def markdown_files():
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md"]
    files += sorted((ROOT / "bindings").glob("*/README.md"))
    files += sorted((ROOT / "docs").glob("*.md"))
    return [f for f in files if f.is_file()]


def snippets(path):
    text = path.read_text()
    for m in FENCE.finditer(text):
        words = m.group(2).split()
        lang = words[0] if words else ""
        line = text.count("\n", 0, m.start()) + 1
        requires = [w.split("=", 1)[1] for w in words[1:] if w.startswith("requires=")]
        yield lang, "fragment" in words[1:], requires, line, m.group(3)


def run(cmd, cwd, env=None):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return p.returncode, (p.stdout + p.stderr).strip()


def check(lang, code, work):
    lib = ROOT / "target" / "release"
    if lang == "c":
        src, exe = work / "snippet.c", work / "snippet_c"
        src.write_text(code)
        rc, out = run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", str(src), "-I", str(ROOT / "include"),
                       f"-L{lib}", "-lgrass", f"-Wl,-rpath,{lib}", "-o", str(exe)], work)
        return (rc, out) if rc else run([str(exe)], work)
    if lang == "cpp":
        src, exe = work / "snippet.cpp", work / "snippet_cpp"
        src.write_text(code)
        rc, out = run(["c++", "-std=c++17", "-Wall", "-Wextra", "-Werror", str(src),
                       "-I", str(ROOT / "include"), "-I", str(ROOT / "bindings" / "cpp"),
                       f"-L{lib}", "-lgrass", f"-Wl,-rpath,{lib}", "-o", str(exe)], work)
        return (rc, out) if rc else run([str(exe)], work)
    if lang == "python":
        src = work / "snippet.py"
        src.write_text(code)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(ROOT / "bindings" / "torch"), env.get("PYTHONPATH", "")] if p)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
        return run([sys.executable, str(src)], ROOT, env)
    return None


def main(argv):
    files = [Path(a).resolve() for a in argv] or markdown_files()
    if not (ROOT / "target" / "release" / "libgrass.so").is_file():
        sys.exit("target/release/libgrass.so is missing: run `cargo build --release` first")
    passed, failed, fragments = 0, 0, 0
    with tempfile.TemporaryDirectory(prefix="grass-snippets-") as tmp:
        for md in files:
            for lang, fragment, requires, line, code in snippets(md):
                shown = md.relative_to(ROOT) if md.is_relative_to(ROOT) else md
                where = f"{shown}:{line} ({lang})"
                if lang not in ("c", "cpp", "python"):
                    continue
                if fragment:
                    fragments += 1
                    print(f"skipped  {where}: a fragment, not run")
                    continue
                missing = [r for r in requires if subprocess.run(
                    [sys.executable, "-c", f"import {r}"], capture_output=True).returncode]
                if missing:
                    fragments += 1
                    print(f"skipped  {where}: needs {', '.join(missing)}, not installed")
                    continue
                work = Path(tempfile.mkdtemp(dir=tmp))
                try:
                    result = check(lang, code, work)
                except subprocess.TimeoutExpired:
                    result = (1, f"timed out after {TIMEOUT_S} s")
                rc, out = result
                if rc == 0:
                    passed += 1
                    print(f"ok       {where}")
                else:
                    failed += 1
                    print(f"FAILED   {where}: exit {rc}\n{out}\n")
    print(f"snippets: {passed} passed, {failed} failed, {fragments} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
