#!/usr/bin/env python3
"""Engine benchmark: plan and apply on a generated recipe of N generic steps.

Prints, side by side and measured in the same run:
  - the first full apply of the graph (every step runs: the baseline),
  - a null apply (everything cached),
  - a plan (everything cached),
  - a plan with one early step changed (its dependents pending).
The goal is a null apply of 500 steps under 50 ms: close to the cost of reading the recipe
and the store, nothing more.

Usage: bench/engine.py [--steps 500] [--repeat 15] [--binary target/release/vmbuild]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def generate(steps: int) -> str:
    """A layered graph: each step depends on up to two steps of the previous layer."""
    lines = []
    width = 20
    for i in range(steps):
        layer, pos = divmod(i, width)
        after = []
        if layer > 0:
            prev = (layer - 1) * width
            after = [f'"step.s{prev + pos}"', f'"step.s{prev + (pos + 1) % width}"']
        lines.append(f'step "s{i}" {{')
        lines.append(f'  command = ["sh", "-c", "echo {i} > $VMBUILD_OUT/out"]')
        if after:
            lines.append(f"  after   = [{', '.join(after)}]")
        lines.append(f'  env     = {{ LAYER = "{layer}" }}')
        lines.append("}")
        lines.append("")
    return "\n".join(lines)


def timed(cmd, env, cwd):
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 2):
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr.decode()}")
    return elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--binary", default="target/release/vmbuild")
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release", "--quiet"], check=True)

    work = tempfile.mkdtemp(prefix="vmbuild-bench-")
    try:
        recipe = os.path.join(work, "site.hcl")
        with open(recipe, "w") as f:
            f.write(generate(args.steps))
        env = dict(os.environ, VMBUILD_STORE=os.path.join(work, "store"), NO_COLOR="1")

        full = timed([binary, "apply", "site.hcl"], env, work)
        null = [timed([binary, "apply", "site.hcl"], env, work) for _ in range(args.repeat)]
        plan = [timed([binary, "plan", "site.hcl"], env, work) for _ in range(args.repeat)]
        with open(recipe) as f:
            text = f.read()
        with open(recipe, "w") as f:
            f.write(text.replace('echo 0 > $VMBUILD_OUT/out', 'echo zero > $VMBUILD_OUT/out', 1))
        changed = [timed([binary, "plan", "site.hcl"], env, work) for _ in range(args.repeat)]
        validate = [timed([binary, "validate", "site.hcl"], env, work) for _ in range(args.repeat)]

        ms = lambda s: f"{s * 1000:9.1f} ms"
        print(f"vmbuild engine benchmark: {args.steps} steps, median of {args.repeat} runs (first apply: 1 run)")
        print(f"{'what':44} {'time':>12} {'vs first apply':>15}")
        rows = [
            ("first apply (every step runs) [baseline]", full),
            ("null apply (everything cached)", statistics.median(null)),
            ("plan (everything cached)", statistics.median(plan)),
            ("plan after changing one early step", statistics.median(changed)),
            ("validate (parse + evaluate only)", statistics.median(validate)),
        ]
        for name, value in rows:
            print(f"{name:44} {ms(value):>12} {value / full * 100:14.2f}%")
        goal = statistics.median(null) * 1000
        print(f"goal: null apply under 50 ms for 500 steps: {'met' if goal < 50 else 'NOT met'} ({goal:.1f} ms)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
