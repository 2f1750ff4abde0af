#!/usr/bin/env python3
"""VM benchmark: the example VM built from nothing, then after a late change, and the OVA
against a plain baseline, all in one run.

Prints:
  - per-step times of a full build of examples/vm (fresh store: debootstrap downloads),
  - the rebuild after changing the last provisioner, as a ratio of the full build,
  - producing the OVA (vmbuild's `output.ova` step) against the baseline
    `qemu-img convert -O vmdk -o subformat=streamOptimized` + `tar` of the same disk:
    time and size side by side.

Needs root and the packages of dev/setup. Usage: bench/vm.py [--binary target/release/vmbuild]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DONE = re.compile(r"\] (\S+): done in ([0-9.]+)s")


def apply(binary, work, env):
    start = time.perf_counter()
    result = subprocess.run([binary, "apply", "site.hcl"], cwd=work, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"apply failed:\n{result.stderr}")
    steps = {m.group(1): float(m.group(2)) for m in DONE.finditer(result.stderr)}
    return elapsed, steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/vmbuild"))
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="vmbuild-bench-vm-")
    try:
        shutil.copytree(os.path.join(ROOT, "examples/vm"), work, dirs_exist_ok=True)
        shutil.rmtree(os.path.join(work, "output"), ignore_errors=True)
        env = dict(os.environ, VMBUILD_STORE=os.path.join(work, "store"), NO_COLOR="1")

        full, steps = apply(args.binary, work, env)
        print(f"full build of examples/vm: {full:.1f} s")
        print(f"  {'step':32} {'seconds':>8}")
        for step, seconds in steps.items():
            print(f"  {step:32} {seconds:8.1f}")

        recipe = os.path.join(work, "site.hcl")
        with open(recipe) as f:
            text = f.read()
        with open(recipe, "w") as f:
            f.write(text.replace("echo 'release ${var.release}'", "echo 'release ${var.release} (late change)'"))
        late, late_steps = apply(args.binary, work, env)
        print(f"rebuild after changing the last provisioner: {late:.1f} s = {late / full * 100:.0f}% of the full build"
              f" ({len(late_steps)} steps ran: {', '.join(late_steps)})")

        disk_tree = subprocess.run([args.binary, "show", "template.web.disk", "-r", "site.hcl"], cwd=work, env=env,
                                   capture_output=True, text=True).stdout
        match = re.search(r"output:\s+\S+ \(`([^`]+)`\)", disk_tree)
        if not match:
            sys.exit(f"cannot find the disk in:\n{disk_tree}")
        raw = os.path.join(match.group(1), "disk.raw")
        ova_seconds = late_steps.get("output.ova")
        ova_file = next(f for f in os.listdir(os.path.join(work, "output")) if f.endswith(".ova"))
        ova_size = os.path.getsize(os.path.join(work, "output", ova_file))

        base = os.path.join(work, "baseline")
        os.makedirs(base)
        start = time.perf_counter()
        subprocess.run(["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", raw,
                        os.path.join(base, "disk1.vmdk")], check=True)
        subprocess.run(["tar", "-cf", "baseline.ova", "disk1.vmdk"], cwd=base, check=True)
        baseline_seconds = time.perf_counter() - start
        baseline_size = os.path.getsize(os.path.join(base, "baseline.ova"))
        print("OVA of the same disk:")
        print(f"  {'':40} {'seconds':>8} {'MiB':>8}")
        print(f"  {'vmbuild output.ova (OVF + manifest + VMDK)':40} {ova_seconds or float('nan'):8.1f} {ova_size / 2**20:8.1f}")
        print(f"  {'baseline: qemu-img streamOptimized + tar':40} {baseline_seconds:8.1f} {baseline_size / 2**20:8.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
