#!/usr/bin/env python3
"""Sites benchmark: N sites of recipes/eupath-site built from one recipe (one graph, one store:
the template is built once) against N separate applies with separate stores (a template each),
side by side, in one run.

Each build goes up to the sites' qcow2 images (`--target module.site.NAME.output.qcow2`), without
the QA boots, whose cost is the same either way. The goal: each extra site costs only its own
part (its page, host name, disk and image), not another template.

Needs root and the packages of dev/setup. Usage:
  bench/sites.py [--sites 1,2,4] [--binary target/release/vmbuild]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["toxodb", "plasmodb", "cryptodb", "giardiadb", "trichdb", "fungidb", "amoebadb", "microsporidiadb"]


def recipe(names):
    items = "\n".join(f'    {n} = "{n.capitalize()}"' for n in names)
    return f'''module "site" {{
  for_each = {{
{items}
  }}

  source = "{os.path.join(ROOT, "recipes/eupath-site")}"
  site   = each.key
  title  = each.value
}}
'''


def apply(binary, names, store):
    work = tempfile.mkdtemp(prefix="vmbuild-bench-sites-", dir="/var/tmp")
    try:
        with open(os.path.join(work, "site.hcl"), "w") as f:
            f.write(recipe(names))
        targets = [a for n in names for a in ("--target", f"module.site.{n}.output.qcow2")]
        env = dict(os.environ, VMBUILD_STORE=store, NO_COLOR="1")
        start = time.perf_counter()
        result = subprocess.run([binary, "apply", "site.hcl", *targets], cwd=work, env=env,
                                capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"apply of {names} failed:\n{result.stderr}")
        ran = result.stderr.count(": started")
        return elapsed, ran
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", default="1,2,4")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/vmbuild"))
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    counts = [int(n) for n in args.sites.split(",")]
    rows = []
    for n in counts:
        names = NAMES[:n]
        stores = tempfile.mkdtemp(prefix="vmbuild-bench-stores-", dir="/var/tmp")
        try:
            together, ran_together = apply(args.binary, names, os.path.join(stores, "one"))
            apart = 0.0
            ran_apart = 0
            for name in names:
                seconds, ran = apply(args.binary, [name], os.path.join(stores, name))
                apart += seconds
                ran_apart += ran
        finally:
            shutil.rmtree(stores, ignore_errors=True)
        rows.append((n, together, ran_together, apart, ran_apart))
    print("sites of recipes/eupath-site up to their qcow2 images, one run each")
    print(f"{'sites':>5} {'one recipe, one store':>24} {'separate applies [baseline]':>30} {'ratio':>7}")
    for n, together, ran_together, apart, ran_apart in rows:
        print(f"{n:>5} {together:>15.1f} s ({ran_together:>2} ran) {apart:>21.1f} s ({ran_apart:>2} ran) "
              f"{together / apart:>7.2f}")
    first = rows[0]
    for n, together, *_ in rows[1:]:
        extra = (together - first[1]) / (n - first[0]) if n != first[0] else 0
        print(f"each site beyond {first[0]} costs {extra:.1f} s in one recipe (a whole build of one site: {first[1]:.1f} s)")


if __name__ == "__main__":
    main()
