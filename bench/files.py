#!/usr/bin/env python3
"""`files` benchmark: plan and apply of a generated file tree, against shell baselines.

Generates a web-services-shaped tree (many small files in nested folders, a few large ones, and
.bam files that the recipe excludes) and prints, side by side and measured in the same run:
  - hashing the shipped files with `find | xargs sha256sum` (b3sum if installed) [baseline],
  - the first plan (cold stat cache: every file is read and hashed),
  - a plan with nothing changed (warm stat cache: stat only),
  - a plan after changing one file,
  - copying the shipped files with `tar --exclude='*.bam' | tar -x` and the whole tree with
    `cp -a` [baseline: the first],
  - apply (vmbuild copies and verifies every file, then the store hashes and syncs the output),
    with its two parts from the step's log.
The tree is in the page cache throughout (it was just written): these are CPU and syscall
costs, not disk reads. vmbuild's stat cache trusts a file only once its ctime is 2 s older than
the plan that hashed it, so the script waits 2.5 s after writing the tree.

Usage: bench/files.py [--files 50000] [--size 2G] [--large 4] [--bam 1000] [--repeat 5]
                      [--copies 3] [--binary target/release/vmbuild] [--keep]
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RECIPE = """
files "webservices" {
  from    = "webServices"
  to      = "/var/www/webServices"
  exclude = ["**/*.bam"]
}
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def generate(root: str, files: int, size: int, large: int, bam: int, seed: int = 1) -> dict:
    """Half the bytes in `large` big files, the rest spread over small ones; `bam` .bam files
    on top (excluded by the recipe), about a tenth of the shipped bytes."""
    rng = random.Random(seed)
    block = rng.randbytes(1 << 20)
    large_bytes = size // 2 if large else 0
    small = max(files - large, 1)
    small_mean = (size - large_bytes) // small

    def write(path: str, n: int, tag: int):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(tag.to_bytes(8, "little"))  # every file differs
            n = max(n - 8, 0)
            while n > 0:
                chunk = min(n, len(block))
                f.write(block[:chunk])
                n -= chunk

    shipped = 0
    for i in range(small):
        # three levels of folders, 100 files a folder
        group = i // 100
        folder = os.path.join(root, f"org{group % 7}", f"release{(group // 7) % 12}", f"d{group}")
        n = int(rng.expovariate(1 / small_mean)) if small_mean else 0
        write(os.path.join(folder, f"file{i}.txt"), n, i)
        shipped += max(n, 8)
    for i in range(large):
        n = large_bytes // large
        write(os.path.join(root, "genomes", f"genome{i}.fasta"), n, files + i)
        shipped += n
    bam_bytes = 0
    for i in range(bam):
        n = max(size // 10 // max(bam, 1), 8)
        folder = os.path.join(root, f"org{(i // 100) % 7}", "alignments", f"a{i // 100}")
        write(os.path.join(folder, f"sample{i}.bam"), n, 2 * files + i)
        bam_bytes += n
    os.chmod(os.path.join(root, "genomes"), 0o755)
    return {"shipped_files": small + large, "shipped_bytes": shipped, "bam_bytes": bam_bytes}


def timed(cmd, env=None, cwd=None, shell=False):
    start = time.perf_counter()
    result = subprocess.run(
        cmd, env=env, cwd=cwd, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 2):
        sys.exit(f"{cmd} failed:\n{result.stderr.decode()}")
    return elapsed, result.stdout.decode() + result.stderr.decode()


def fmt(runs) -> str:
    return " ".join(f"{t:.1f}" for t in runs)


def details(plan_text: str) -> str:
    for line in plan_text.splitlines():
        if "hashed" in line:
            return line.strip()
    return ""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=50000)
    parser.add_argument("--size", default="2G", help="bytes of shipped files (K, M, G)")
    parser.add_argument("--large", type=int, default=4, help="large files among them")
    parser.add_argument("--bam", type=int, default=1000, help=".bam files, excluded")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each plan")
    parser.add_argument("--copies", type=int, default=3, help="runs of each copy")
    parser.add_argument("--binary", default="target/release/vmbuild")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release", "--quiet"], check=True)

    work = tempfile.mkdtemp(prefix="vmbuild-bench-files-")
    try:
        tree = os.path.join(work, "webServices")
        start = time.perf_counter()
        shape = generate(tree, args.files, parse_size(args.size), args.large, args.bam)
        generated = time.perf_counter() - start
        with open(os.path.join(work, "site.hcl"), "w") as f:
            f.write(RECIPE)
        env = dict(os.environ, VMBUILD_STORE=os.path.join(work, "store"), NO_COLOR="1")
        subprocess.run(["sync"], check=True)
        time.sleep(2.5)  # older than the racy margin: the second plan may trust the cache

        hasher = "b3sum" if shutil.which("b3sum") else "sha256sum"
        hash_base, _ = timed(
            f"find webServices -type f ! -name '*.bam' -print0 | xargs -0 {hasher} > /dev/null",
            cwd=work,
            shell=True,
        )
        cold, cold_out = timed([binary, "plan", "site.hcl"], env, work)
        warm_runs = [timed([binary, "plan", "site.hcl"], env, work) for _ in range(args.repeat)]
        warm = statistics.median(t for t, _ in warm_runs)
        warm_out = warm_runs[-1][1]
        changed_runs = []
        for i in range(args.repeat):
            path = os.path.join(tree, "org0", "release0", "d0", "file0.txt")
            with open(path, "ab") as f:
                f.write(f"change {i}\n".encode())
            changed_runs.append(timed([binary, "plan", "site.hcl"], env, work))
        changed = statistics.median(t for t, _ in changed_runs)
        changed_out = changed_runs[-1][1]

        # The baselines copy into the page cache and do not wait for the disk; vmbuild's copy
        # does the same, and its store commit then hashes the tree and waits for the disk
        # (syncfs), shown apart. Disk writes are noisy on a shared machine: each copy runs
        # --copies times, interleaved, after a `sync` that is not timed; medians are shown.
        tar_runs, cp_runs, apply_runs, copy_phase, commit_phase = [], [], [], [], []
        for round in range(args.copies):
            tar_dest = os.path.join(work, "tar-copy")
            os.makedirs(tar_dest)
            subprocess.run(["sync"], check=True)
            t, _ = timed(
                f"tar -C webServices --exclude='*.bam' -cf - . | tar -C {tar_dest} -xpf -",
                cwd=work,
                shell=True,
            )
            tar_runs.append(t)
            shutil.rmtree(tar_dest)
            subprocess.run(["sync"], check=True)
            t, _ = timed("cp -a webServices cp-copy", cwd=work, shell=True)
            cp_runs.append(t)
            shutil.rmtree(os.path.join(work, "cp-copy"))
            # A fresh store each round, with the stat cache of the plans above: apply's own
            # plan is then the warm one, and the step runs.
            store = os.path.join(work, f"store-apply-{round}")
            shutil.copytree(os.path.join(work, "store", "cache"), os.path.join(store, "cache"))
            apply_env = dict(env, VMBUILD_STORE=store)
            subprocess.run(["sync"], check=True)
            t, out = timed([binary, "apply", "site.hcl"], apply_env, work)
            apply_runs.append(t)
            step = next(
                (float(l.split("done in ")[1].split("s,")[0]) for l in out.splitlines()
                 if "files.webservices: done in" in l),
                float("nan"),
            )
            log = subprocess.run(
                [binary, "log", "files.webservices", "-r", "site.hcl"],
                env=apply_env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            ).stdout.decode()
            copied = next(
                (float(l.split(" in ")[1].split(" s:")[0]) for l in log.splitlines()
                 if l.startswith("copied ")),
                float("nan"),
            )
            copy_phase.append(copied)
            commit_phase.append(step - copied)
            copied_line = next((l for l in log.splitlines() if l.startswith("copied ")), "")
            if round + 1 < args.copies:
                shutil.rmtree(store)
        null, _ = timed([binary, "apply", "site.hcl"], apply_env, work)
        tar_copy = statistics.median(tar_runs)
        cp_copy = statistics.median(cp_runs)
        apply = statistics.median(apply_runs)

        gib = shape["shipped_bytes"] / (1 << 30)
        print(
            f"vmbuild files benchmark: {shape['shipped_files']:,} files shipped ({gib:.2f} GiB), "
            f"{args.bam:,} .bam files excluded ({shape['bam_bytes'] / (1 << 30):.2f} GiB); "
            f"tree generated in {generated:.1f} s; plans: median of {args.repeat}"
        )
        s = lambda t: f"{t:9.2f} s"
        rows = [
            (f"hash the shipped files: find | xargs {hasher} [baseline]", hash_base, hash_base),
            ("plan, cold stat cache (hash everything)", cold, hash_base),
            ("plan, nothing changed (stat cache)", warm, hash_base),
            ("plan after changing one file", changed, hash_base),
            ("copy the shipped files: tar --exclude | tar -x [baseline]", tar_copy, tar_copy),
            ("copy everything: cp -a", cp_copy, tar_copy),
            ("apply (its plan, the copy, the store's commit)", apply, tar_copy),
            ("  of which the copy, verifying every digest", statistics.median(copy_phase), tar_copy),
            ("  of which the store's commit (hash the tree, syncfs)", statistics.median(commit_phase), tar_copy),
            ("apply again (cached)", null, tar_copy),
        ]
        print(f"{'what':66} {'time':>11} {'vs baseline':>12}")
        for name, value, base in rows:
            print(f"{name:66} {s(value):>11} {value / base * 100:11.1f}%")
        print()
        print("plan details, cold:   ", details(cold_out))
        print("plan details, warm:   ", details(warm_out))
        print("plan details, changed:", details(changed_out))
        print("apply log:            ", copied_line)
        print(f"copies: median of {args.copies}; runs (s): tar {fmt(tar_runs)}, cp -a {fmt(cp_runs)}, "
              f"apply {fmt(apply_runs)}")
        if args.keep:
            print(f"kept {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
