#!/usr/bin/env python3
"""Remote-store benchmark: a second builder that finds a recipe in the shared remote store
against the first builder's full build, and the throughput of one 1 GiB object through the
remote store against `rclone copy` to the same bucket, all in one run against one Garage S3
server (single node, on loopback, in a temporary folder).

Prints:
  - builder A's full build (empty local store; it uploads every step) against builder B's apply
    of the same recipe (another empty local store, trusting A's key: it runs nothing and
    downloads only the artifacts), side by side, with the steps each ran (B must run none);
  - upload and download of a 1 GiB step output (`head -c 1G /dev/urandom`): vmbuild's upload
    as A's apply reports it, its download when a dependent step runs on B, against
    `rclone copy` of the same file to and from another prefix of the same bucket, in MiB/s.
    vmbuild's figures include archiving and hashing the tree on the way up, and hashing,
    unpacking and committing the tree on the way down; rclone's are a plain file copy (with
    its own MD5 check).

The recipe is examples/vm/site.hcl by default (5-10 minutes to build here; needs root and the
packages of dev/setup); `--recipe FILE` picks another (its folder is copied), `--quick` a small
synthetic recipe of command steps (~200 MB of outputs, no artifacts, no root). Needs `garage`
(on PATH or in ~/.cargo/bin; dev/setup installs it) and `rclone`. Temporary data goes under
/var/tmp. Usage:
  bench/remote.py [--quick | --recipe FILE] [--binary target/release/vmbuild]
"""

import argparse
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP = "/var/tmp"
GIB = 1 << 30
MIB = 1 << 20
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
UPLOADED = re.compile(r"(?:^|\] )(\S+): uploaded to the remote store \(([0-9.]+) (\w+) in ([0-9.]+)s\)", re.M)
DOWNLOADED = re.compile(r"(?:^|\] )(\S+): downloaded from the remote store in ([0-9.]+)s, output (\S+)", re.M)

# About 200 MB of outputs in four command steps, two of them dependents.
QUICK = """
step "a" {
  command = ["sh", "-c", "head -c 80000000 /dev/urandom > $VMBUILD_OUT/a"]
}
step "b" {
  command = ["sh", "-c", "head -c 60000000 $VMBUILD_IN_A/a > $VMBUILD_OUT/b; mkdir $VMBUILD_OUT/d; echo b > $VMBUILD_OUT/d/f"]
  after   = [step.a]
}
step "c" {
  command = ["sh", "-c", "head -c 60000000 /dev/urandom > $VMBUILD_OUT/c"]
}
step "d" {
  command = ["sh", "-c", "wc -c $VMBUILD_IN_B/b $VMBUILD_IN_C/c > $VMBUILD_OUT/sizes"]
  after   = [step.b, step.c]
}
"""

# One 1 GiB output, and a dependent whose change makes it run (and download `big`) elsewhere.
BIG = """
step "big" {
  command = ["sh", "-c", "head -c 1073741824 /dev/urandom > $VMBUILD_OUT/big"]
}
step "use" {
  command = ["sh", "-c", "wc -c $VMBUILD_IN_BIG/big > $VMBUILD_OUT/n; echo CHANGE-ME"]
  after   = [step.big]
}
"""


def find_garage():
    """`garage` on PATH, else in ~/.cargo/bin (as tests/support/garage.rs looks for it)."""
    dirs = os.environ.get("PATH", "").split(os.pathsep) + [os.path.expanduser("~/.cargo/bin")]
    for d in dirs:
        path = os.path.join(d, "garage")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    sys.exit("no `garage` binary on PATH or in ~/.cargo/bin (dev/setup installs it)")


def free_ports():
    """Two distinct free loopback ports (held together while picked, so they differ)."""
    a, b = socket.socket(), socket.socket()
    try:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]
    finally:
        a.close()
        b.close()


class Garage:
    """A single-node Garage server on loopback with one bucket and one key that may read, write
    and own it: what tests/support/garage.rs sets up, in Python."""

    STARTUP = 30.0

    def __init__(self, folder):
        self.binary = find_garage()
        self.dir = folder
        self.config = os.path.join(folder, "garage.toml")
        self.log = os.path.join(folder, "garage.log")
        self.region = "garage"
        self.bucket = "vmbuild-bench"
        self.child = None
        began = time.perf_counter()
        self.spawn_and_wait()

        # One node with a role: the cluster has a layout and can store data.
        node = self.cli("node", "id", "-q")
        node_id = node[:64]
        if len(node_id) != 64 or not all(c in "0123456789abcdefABCDEF" for c in node_id):
            self.fail(f"`garage node id` printed no node id: {node!r}")
        self.cli("layout", "assign", "-z", "dc1", "-c", "1G", node_id)
        self.cli("layout", "apply", "--version", "1")

        self.cli_until_ok("bucket", "create", self.bucket)
        key_name = f"{self.bucket}-key"
        key = self.cli("key", "create", key_name)

        # `Key ID:      GK...` and `Secret key:  <64 hex>` among the key's information.
        def field(name):
            for line in key.splitlines():
                line = line.strip()
                if line.startswith(name) and line[len(name):].strip():
                    return line[len(name):].strip()
            return None

        self.access_key_id, self.secret_access_key = field("Key ID:"), field("Secret key:")
        if not self.access_key_id or not self.secret_access_key:
            self.fail(f"no key id and secret in the output of `garage key create`:\n{key}")
        self.cli("bucket", "allow", "--read", "--write", "--owner", self.bucket, "--key", key_name)
        print(f"garage: up in {time.perf_counter() - began:.1f} s at {self.endpoint}", file=sys.stderr)

    def write_config(self):
        self.s3_port, self.rpc_port = free_ports()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        with open(self.config, "w") as f:
            f.write(f'''metadata_dir = "{os.path.join(self.dir, "meta")}"
data_dir = "{os.path.join(self.dir, "data")}"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"

rpc_bind_addr = "127.0.0.1:{self.rpc_port}"
rpc_public_addr = "127.0.0.1:{self.rpc_port}"
rpc_secret = "{secrets.token_hex(32)}"

[s3_api]
s3_region = "{self.region}"
api_bind_addr = "127.0.0.1:{self.s3_port}"
''')

    def spawn_and_wait(self):
        """Starts `garage server` and waits until both the CLI (over RPC) and the S3 API answer;
        tries other ports when the picked ones were taken meanwhile."""
        deadline = time.monotonic() + self.STARTUP
        while True:
            self.write_config()
            logged = os.path.getsize(self.log) if os.path.exists(self.log) else 0
            with open(self.log, "a") as log:
                env = dict(os.environ, RUST_LOG="garage=info,warn")
                self.child = subprocess.Popen([self.binary, "-c", self.config, "server"], env=env,
                                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            error = self.wait_until_up(deadline)
            if error is None:
                return
            with open(self.log, errors="replace") as f:
                since = f.read()[logged:]
            if time.monotonic() < deadline and "in use" in since:
                self.stop()
                time.sleep(0.2)
                continue
            self.fail(f"the server did not come up: {error}")

    def wait_until_up(self, deadline):
        rpc_up = False
        while True:
            if self.child.poll() is not None:
                return f"it exited ({self.child.returncode})"
            if not rpc_up:
                rpc_up = self.run("status", timeout=5).returncode == 0
            if rpc_up and self.s3_answers():
                return None
            if time.monotonic() >= deadline:
                what = "the CLI answers, the S3 API does not" if rpc_up else "`garage status` fails"
                return f"still not answering after {self.STARTUP:.0f} s ({what})"
            time.sleep(0.05)

    def s3_answers(self):
        """Whether the S3 API gives an HTTP answer that is not a server error (an anonymous
        request is refused with 403 once the server is ready)."""
        try:
            with socket.create_connection(("127.0.0.1", self.s3_port), timeout=2) as s:
                s.sendall(f"GET /{self.bucket}/ HTTP/1.1\r\nHost: 127.0.0.1:{self.s3_port}\r\n"
                          "Connection: close\r\n\r\n".encode())
                head = b""
                while len(head) < 12:
                    chunk = s.recv(12 - len(head))
                    if not chunk:
                        return False
                    head += chunk
        except OSError:
            return False
        return head.startswith(b"HTTP/1.") and head[9:10] != b"5"

    def run(self, *args, timeout=STARTUP):
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        try:
            return subprocess.run([self.binary, "-c", self.config, *args], env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, -9, "", f"did not finish in {timeout:.0f} s")

    def cli(self, *args):
        result = self.run(*args)
        if result.returncode != 0:
            self.fail(f"`garage {' '.join(args)}` failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result.stdout

    def cli_until_ok(self, *args):
        """Right after the layout is applied, the cluster may not take writes yet."""
        deadline = time.monotonic() + self.STARTUP
        while True:
            result = self.run(*args)
            if result.returncode == 0:
                return result.stdout
            if time.monotonic() >= deadline:
                return self.cli(*args)
            time.sleep(0.05)

    def fail(self, what):
        self.stop()
        with open(self.log, errors="replace") as f:
            tail = "\n".join(f.read().splitlines()[-40:])
        sys.exit(f"Garage ({self.binary}, config {self.config}): {what}\n"
                 f"----- the end of its log ({self.log}) -----\n{tail}")

    def stop(self):
        if self.child is not None:
            self.child.kill()
            self.child.wait()
            self.child = None

    def url(self, prefix):
        return f"s3://{self.bucket}/{prefix}?endpoint={self.endpoint}&region={self.region}"

    def env(self):
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_REGION": self.region}


class Builder:
    """A builder: a work folder with the recipe (a copy of `source`'s folder, or `text`), its own
    empty local store and configuration: the remote at `prefix`, a signing key named `key_name`
    when given (it uploads; none: it only reads), and the public keys it trusts."""

    def __init__(self, binary, garage, top, name, prefix, recipe, trusts=(), key_name=None):
        self.binary = binary
        self.work = os.path.join(top, name)
        source, text = recipe
        if source:
            shutil.copytree(os.path.dirname(source), self.work,
                            ignore=shutil.ignore_patterns("output", "store", ".vmbuild"))
            self.recipe = os.path.basename(source)
        else:
            os.makedirs(self.work)
            self.recipe = "site.hcl"
            with open(os.path.join(self.work, self.recipe), "w") as f:
                f.write(text)
        self.env = dict(os.environ, **garage.env(), NO_COLOR="1",
                        VMBUILD_STORE=os.path.join(top, f"{name}-store"),
                        VMBUILD_CONFIG=os.path.join(top, f"{name}.toml"))
        for variable in ("VMBUILD_REMOTE", "VMBUILD_SIGNING_KEY", "VMBUILD_NO_PUSH"):
            self.env.pop(variable, None)
        self.public_key = None
        config = f"[remote]\nurl = \"{garage.url(prefix)}\"\n"
        if key_name:
            key = os.path.join(top, f"{name}.key")
            made = self.run("key", "generate", key_name, "--out", key)
            self.public_key = made.stdout.strip()
            config += f"signing_key = \"{key}\"\n"
        config += "trusted_keys = [" + ", ".join(f'"{k}"' for k in trusts) + "]\n"
        with open(self.env["VMBUILD_CONFIG"], "w") as f:
            f.write(config)

    def run(self, *args):
        result = subprocess.run([self.binary, *args], cwd=self.work, env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"`vmbuild {' '.join(args)}` in {self.work} failed:\n{result.stdout}{result.stderr}")
        return result

    def apply(self):
        """Seconds of `vmbuild apply`, the steps it ran, and its progress lines."""
        start = time.perf_counter()
        result = self.run("apply", self.recipe)
        elapsed = time.perf_counter() - start
        return elapsed, result.stderr.count(": started"), result.stderr

    def edit(self, old, new):
        path = os.path.join(self.work, self.recipe)
        with open(path) as f:
            text = f.read()
        if old not in text:
            sys.exit(f"no {old!r} in {path}")
        with open(path, "w") as f:
            f.write(text.replace(old, new))

    def output_folder(self, step):
        shown = self.run("show", step, "-r", self.recipe).stdout
        match = re.search(r"output:\s+\S+ \(`([^`]+)`\)", shown)
        if not match:
            sys.exit(f"cannot find the output of {step} in:\n{shown}")
        return match.group(1)


def uploads(stderr):
    return [(m.group(1), float(m.group(2)) * UNITS[m.group(3)], float(m.group(4))) for m in UPLOADED.finditer(stderr)]


def downloads(stderr):
    return [(m.group(1), float(m.group(2))) for m in DOWNLOADED.finditer(stderr)]


def rclone(garage, *args):
    """Seconds of `rclone ARGS` against the server as remote `G:`, configured by variables."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(RCLONE_CONFIG="/dev/null", RCLONE_CONFIG_G_TYPE="s3", RCLONE_CONFIG_G_PROVIDER="Other",
               RCLONE_CONFIG_G_ENV_AUTH="false", RCLONE_CONFIG_G_ENDPOINT=garage.endpoint,
               RCLONE_CONFIG_G_REGION=garage.region, RCLONE_CONFIG_G_ACCESS_KEY_ID=garage.access_key_id,
               RCLONE_CONFIG_G_SECRET_ACCESS_KEY=garage.secret_access_key,
               RCLONE_CONFIG_G_FORCE_PATH_STYLE="true")
    start = time.perf_counter()
    result = subprocess.run(["rclone", *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"`rclone {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
    return elapsed


def shared_build(binary, garage, top, recipe, label):
    """Builder A builds `recipe` from nothing and uploads it; builder B, trusting A, applies it."""
    a = Builder(binary, garage, top, "a", "shared", recipe, key_name="builder-a")
    b = Builder(binary, garage, top, "b", "shared", recipe, trusts=[a.public_key])
    a_seconds, a_ran, a_log = a.apply()
    b_seconds, b_ran, b_log = b.apply()
    up = uploads(a_log)
    down = downloads(b_log)
    print(f"{label}: builder A builds it from nothing, builder B (empty store, trusts A) applies it")
    print(f"  {'builder A full build [baseline]':>33} {'builder B apply':>22} {'B / A':>7}")
    print(f"  {a_seconds:>22.1f} s ({a_ran:>3} ran) {b_seconds:>12.1f} s ({b_ran:>3} ran) "
          f"{b_seconds / a_seconds:>7.3f}")
    sizes = {i: n for i, n, _ in up}
    print(f"  A uploaded {len(up)} steps, {sum(sizes.values()) / MIB:.1f} MiB; B downloaded {len(down)}: "
          + (", ".join(f"{i} ({sizes.get(i, 0) / MIB:.1f} MiB) in {s:.1f} s" for i, s in down) or "nothing"))
    if b_ran != 0:
        sys.exit(f"builder B ran {b_ran} steps, where it should find all of them in the remote store:\n{b_log}")


def throughput(binary, garage, top):
    """One 1 GiB output through vmbuild's remote store against rclone copy of the same file."""
    recipe = (None, BIG)
    a = Builder(binary, garage, top, "big-a", "throughput", recipe, key_name="builder-a")
    _, _, a_log = a.apply()
    big = [u for u in uploads(a_log) if u[0] == "step.big"]
    if not big:
        sys.exit(f"no upload of step.big in A's progress:\n{a_log}")
    _, up_bytes, up_seconds = big[0]

    b = Builder(binary, garage, top, "big-b", "throughput", recipe, trusts=[a.public_key])
    b.edit("CHANGE-ME", "changed on B")
    _, b_ran, b_log = b.apply()
    fetched = [d for d in downloads(b_log) if d[0] == "step.big"]
    if not fetched:
        sys.exit(f"no download of step.big in B's progress:\n{b_log}")
    down_seconds = fetched[0][1]
    if b_ran != 1:
        sys.exit(f"builder B ran {b_ran} steps, where only step.use should run:\n{b_log}")

    source = os.path.join(a.output_folder("step.big"), "big")
    size = os.path.getsize(source)
    rclone_up = rclone(garage, "copy", source, f"G:{garage.bucket}/rclone")
    back = os.path.join(top, "rclone-back")
    os.makedirs(back)
    rclone_down = rclone(garage, "copy", f"G:{garage.bucket}/rclone/big", back)
    if os.path.getsize(os.path.join(back, "big")) != size:
        sys.exit("rclone downloaded a file of another size")

    print(f"a {size / GIB:.1f} GiB step output (random bytes; the archive uploaded: {up_bytes / MIB:.1f} MiB)"
          " through the remote store, against rclone copy of the same file, same bucket")
    print(f"  {'':10} {'vmbuild':>18} {'rclone copy [baseline]':>24} {'speed vmbuild / rclone':>23}")
    for what, mine, theirs in (("upload", up_seconds, rclone_up), ("download", down_seconds, rclone_down)):
        print(f"  {what:10} {size / MIB / mine:>8.1f} MiB/s {mine:>5.1f} s {size / MIB / theirs:>10.1f} MiB/s "
              f"{theirs:>5.1f} s {theirs / mine:>23.2f}")
    print("  (vmbuild's upload includes archiving and hashing the tree; its download, hashing, unpacking"
          " and committing it)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/vmbuild"))
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--recipe", help="the recipe A and B build (its folder is copied); "
                                        "default: examples/vm/site.hcl")
    which.add_argument("--quick", action="store_true",
                       help="a small synthetic recipe of command steps (~200 MB of outputs) instead")
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    if shutil.which("rclone") is None:
        sys.exit("no `rclone` on PATH (apt-get install rclone)")
    if args.quick:
        recipe, label = (None, QUICK), "a synthetic recipe (4 command steps, ~200 MB of outputs)"
    else:
        source = os.path.abspath(args.recipe or os.path.join(ROOT, "examples/vm/site.hcl"))
        recipe, label = (source, None), os.path.relpath(source, ROOT)

    top = tempfile.mkdtemp(prefix="vmbuild-bench-remote-", dir=TMP)
    garage = None
    try:
        os.makedirs(os.path.join(top, "garage"))
        garage = Garage(os.path.join(top, "garage"))
        shared_build(args.binary, garage, top, recipe, label)
        throughput(args.binary, garage, top)
    finally:
        if garage is not None:
            garage.stop()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
