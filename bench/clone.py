#!/usr/bin/env python3
"""Clone benchmark: a GUS/ApiDB-shaped production database cloned into a VM's PostgreSQL, against
plain `pg_dump -Fd -j2 | pg_restore -j2` of the same schemas, in the same run.

Prints, side by side:
  - vmbuild's `database.toxo.dump` + `database.load` (dump in one snapshot with row counts,
    restore into a fresh cluster of the template's PostgreSQL in a chroot, row counts compared),
  - the baseline: `pg_dump -Fd -j2 -n ...` of the allowlisted schemas, then `createdb` and
    `pg_restore -j2 --no-owner` into the host's server,
as seconds and MB/s of source data (the allowlisted schemas' relation sizes, indexes included).

Needs root, the packages of dev/setup, and the host's PostgreSQL with a superuser URL in
VMBUILD_TEST_PG_URL (dev/test makes one). The production fixture is made once per size (the
large one takes a minute or two) and the template once per store.

Usage: bench/clone.py [--size large|small] [--store /var/tmp/vmbuild-bench-clone-store]
                      [--binary target/release/vmbuild] [--keep]
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
SCHEMAS = ["apidb", "apidbtuning", "core", "dots", "genes", "sres", "study"]

RECIPE = """
template "db" {
  debootstrap {
    suite    = "bookworm"
    packages = ["postgresql"]
  }
}

database "toxo" {
  engine          = "postgres"
  source          = env("TOXO_SOURCE_URL")
  schemas         = databaseinfo("core.databaseinfo")
  exclude_schemas = ["staff_*", "workflow"]
  into            = "toxodb"
}
"""


def run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def psql(db, sql):
    return run(["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-d", db, "-c", sql]).stdout.strip()


def timed(cmd, **kwargs):
    start = time.perf_counter()
    result = run(cmd, **kwargs)
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="large", choices=["small", "large"])
    parser.add_argument("--store", default="/var/tmp/vmbuild-bench-clone-store")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/vmbuild"))
    parser.add_argument("--keep", action="store_true", help="keep the fixture database")
    args = parser.parse_args()
    base_url = os.environ.get("VMBUILD_TEST_PG_URL")
    if not base_url:
        sys.exit("set VMBUILD_TEST_PG_URL to a superuser URL of the host's PostgreSQL (dev/test does)")
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    db = f"vmbuild_bench_clone_{args.size}"
    exists = psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{db}'") == "1"
    if not exists:
        seconds, _ = timed(["runuser", "-u", "postgres", "--", "bash",
                            os.path.join(ROOT, "examples/production/fixture.sh"), "--size", args.size, "--db", db],
                           cwd="/")
        print(f"made the {args.size} production fixture `{db}` in {seconds:.0f} s")
    source_bytes = int(psql(db, "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
                                f"AND n.nspname IN ({', '.join(repr(s) for s in SCHEMAS)})"))
    rows = int(psql(db, "SELECT count(*) FROM genes.gene"))
    mb = source_bytes / 1e6
    url = f"{base_url.rsplit('/', 1)[0]}/{db}"

    work = tempfile.mkdtemp(prefix="vmbuild-bench-clone-", dir="/var/tmp")
    try:
        with open(os.path.join(work, "site.hcl"), "w") as f:
            f.write(RECIPE)
        env = dict(os.environ, VMBUILD_STORE=args.store, NO_COLOR="1", TOXO_SOURCE_URL=url)
        # The template once (cached in the store between runs of the benchmark).
        run([args.binary, "apply", "site.hcl", "--target", "template.db.system"], cwd=work, env=env)
        # The clone. The load's key depends on the dump's output, which changes with a new
        # fixture only; remove the load's cached output by changing nothing but forcing a run:
        # a fresh namespace folder is not enough, so use a store of its own for the clone steps.
        clone_store = os.path.join(work, "store")
        run(["cp", "-al", args.store, clone_store])
        env["VMBUILD_STORE"] = clone_store
        total, result = timed([args.binary, "apply", "site.hcl", "--target", "database.load"], cwd=work, env=env)
        steps = {m.group(1): float(m.group(2)) for m in DONE.finditer(result.stderr)}
        dump_s, load_s = steps.get("database.toxo.dump"), steps.get("database.load")
        if dump_s is None or load_s is None:
            sys.exit(f"the clone steps did not both run:\n{result.stderr}")

        # The baseline, same schemas, same parallelism.
        dump_dir = os.path.join(work, "baseline.dump")
        target = f"{db}_restored"
        psql("postgres", f"DROP DATABASE IF EXISTS {target}")
        schema_args = [a for s in SCHEMAS for a in ("-n", s)]
        base_dump, _ = timed(["pg_dump", "-Fd", "-j2", "--no-owner", "--no-privileges", *schema_args,
                              "-f", dump_dir, "-d", url])
        base_restore, _ = timed(["sh", "-c", f"createdb --maintenance-db='{base_url}' {target} && "
                                 f"pg_restore -j2 --no-owner --no-privileges -d '{url.rsplit('/', 1)[0]}/{target}' {dump_dir}"])
        psql("postgres", f"DROP DATABASE IF EXISTS {target}")

        vm_total = dump_s + load_s
        base_total = base_dump + base_restore
        print(f"clone of {len(SCHEMAS)} schemas, {mb:.0f} MB of source data ({rows:,} genes), one run")
        print(f"{'what':52} {'seconds':>8} {'MB/s':>8}")
        for name, seconds in [
            ("vmbuild database.toxo.dump", dump_s),
            ("vmbuild database.load", load_s),
            ("vmbuild dump + load", vm_total),
            ("baseline pg_dump -Fd -j2", base_dump),
            ("baseline createdb + pg_restore -j2", base_restore),
            ("baseline dump + restore [baseline]", base_total),
        ]:
            print(f"{name:52} {seconds:8.1f} {mb / seconds:8.1f}")
        print(f"vmbuild / baseline: {vm_total / base_total:.2f}x the time "
              f"(vmbuild also counts rows in the snapshot and in the clone, runs initdb in a chroot and VACUUM ANALYZE)")
        print(f"whole apply of the two steps, with plan and commit: {total:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    main()
