#!/usr/bin/env python3
"""Leak scan benchmark: the scan's matcher against GNU grep on the same raw images.

Makes two raw images of --size-gib GiB in one work folder:
  - sparse: a disk as vmbuild makes them, mostly holes, with --data-percent of it written
    (bytes of the build machine's /usr: binaries and text, as a system disk holds),
  - dense: every byte written (no holes), the same kind of bytes,
and plants a few forbidden strings in each. Then, in the same run, one run of each:
  - `cat IMAGE > /dev/null`: reading the bytes and nothing else (the ceiling),
  - `LC_ALL=C grep -a -c -F -f PATTERNS IMAGE`: the baseline a person would reach for,
  - the scan's matcher (`engine/examples/leak_scan.rs`: Aho-Corasick in 8 MiB chunks, holes
    not read),
for 3 patterns (a recipe's `forbid`) and 1000 (a `forbid_files` of e-mail addresses).
The images are read once before timing, so everything runs from the page cache: the figures
are the search's own speed, not the disk's.

Usage: bench/scan.py [--size-gib 4] [--data-percent 10] [--work /var/tmp]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20


def usr_bytes():
    """An endless stream of the bytes of /usr's files, in chunks."""
    while True:
        for top, _, files in os.walk("/usr"):
            for name in sorted(files):
                path = os.path.join(top, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as f:
                        while chunk := f.read(8 * MIB):
                            yield chunk
                except OSError:
                    continue


def fill(f, stream, length):
    """Write `length` bytes from `stream` at the current offset of `f`."""
    left = length
    while left > 0:
        chunk = next(stream)[:left]
        f.write(chunk)
        left -= len(chunk)


def make_images(work, size, data_percent, planted):
    stream = usr_bytes()
    sparse = os.path.join(work, "sparse.raw")
    dense = os.path.join(work, "dense.raw")
    with open(sparse, "wb") as f:
        f.truncate(size)
        # Data in runs of 8 MiB spread over the disk, like files of a file system.
        runs = max(1, size * data_percent // 100 // (8 * MIB))
        stride = size // runs
        for i in range(runs):
            f.seek(i * stride)
            fill(f, stream, 8 * MIB)
    with open(dense, "wb") as f:
        fill(f, stream, size)
    for image in (sparse, dense):
        with open(image, "r+b") as f:
            for offset, text in planted:
                f.seek(offset)
                f.write(text)
    return sparse, dense


def timed(cmd, stdout=subprocess.DEVNULL):
    start = time.perf_counter()
    result = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, env=dict(os.environ, LC_ALL="C"))
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 1):  # grep: 1 = no line matched
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr.decode()}")
    return elapsed, result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=float, default=4)
    parser.add_argument("--data-percent", type=int, default=10)
    parser.add_argument("--work", default="/var/tmp")
    parser.add_argument("--binary", default="target/release/examples/leak_scan")
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)
    if not os.path.exists(binary):
        subprocess.run(
            ["cargo", "build", "--release", "--quiet", "-p", "vmbuild-engine", "--example", "leak_scan"],
            check=True,
        )
    size = int(args.size_gib * (1 << 30)) // MIB * MIB
    work = tempfile.mkdtemp(prefix="vmbuild-bench-scan-", dir=args.work)
    try:
        rng = random.Random(7)
        few = [b"Tox0-db-Pa55word!", b"db1.production.example.org", b"alice.curator@example.edu"]
        many = few + [
            f"{''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(5, 12)))}"
            f".{rng.randint(1, 999)}@{rng.choice(['example.org', 'uni.example.edu', 'lab.example.net'])}".encode()
            for _ in range(997)
        ]
        pattern_files = {}
        for name, patterns in (("3", few), ("1000", many)):
            path = os.path.join(work, f"patterns-{name}.txt")
            with open(path, "wb") as f:
                f.write(b"\n".join(patterns) + b"\n")
            pattern_files[name] = path
        # In the middle of data runs and across an 8 MiB chunk boundary.
        planted = [(3 * MIB + 17, few[0]), (8 * MIB - 5, few[1]), (size // 2 + 1234, many[500]), (size - 64, few[2])]
        t = time.perf_counter()
        sparse, dense = make_images(work, size, args.data_percent, planted)
        made = time.perf_counter() - t
        print(f"vmbuild leak scan benchmark: two {size / (1 << 30):.1f} GiB raw images made in {made:.0f} s; one run each, from the page cache")
        header = f"{'image':7} {'patterns':>8} {'what':34} {'time':>9} {'MiB/s':>8} {'vs grep':>8} {'found':>10}"
        print(header)
        print("-" * len(header))
        for image, label in ((sparse, "sparse"), (dense, "dense")):
            timed(["cat", image])  # into the page cache
            allocated = os.stat(image).st_blocks * 512
            cat, _ = timed(["cat", image])
            for name, patterns in pattern_files.items():
                grep, result = timed(["grep", "-a", "-c", "-F", "-f", patterns, image], stdout=subprocess.PIPE)
                grep_lines = result.stdout.decode().strip()
                scan, result = timed([binary, patterns, image], stdout=subprocess.PIPE)
                report = json.loads(result.stdout.decode().splitlines()[0])
                rate = lambda s: size / MIB / s
                rows = [
                    ("cat > /dev/null (read only)", cat, "-"),
                    ("grep -a -c -F -f [baseline]", grep, f"{grep_lines} lines"),
                    ("leak scan (Aho-Corasick, chunks)", scan, f"{report['occurrences']} hits"),
                ]
                for what, seconds, found in rows:
                    print(f"{label:7} {name:>8} {what:34} {seconds:8.2f}s {rate(seconds):8.0f} {grep / seconds:7.2f}x {found:>10}")
            print(f"{label:7} {'':>8} {'(allocated: ' + str(allocated // MIB) + ' MiB of ' + str(size // MIB) + ')':34}")
        print("MiB/s is of the image's size (holes count as bytes searched); vs grep > 1 is faster than grep.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
