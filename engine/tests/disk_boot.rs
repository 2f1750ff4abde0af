//! Proof that the disk step makes an image that boots by itself: assemble a 2 GiB disk from
//! a Debian root tree (`VMBUILD_TEST_ROOTFS`, with a kernel, grub-pc, systemd and nginx, and
//! DHCP on the first NIC), convert it to qcow2, boot it under QEMU with no `-kernel`, and wait
//! for nginx to answer through a forwarded port.
//!
//! Ignored by default (needs root for `-d` ownership, QEMU, minutes of TCG time):
//!
//! ```sh
//! VMBUILD_TEST_ROOTFS=/path/to/rootfs cargo test -p vmbuild-engine --test disk_boot -- --ignored --nocapture
//! ```
//!
//! The tree is copied first (`cp -a`): the step writes fstab and GRUB's files into its input.
//! Artifacts stay in `VMBUILD_TEST_SCRATCH` when set (console.log is useful on failure).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::steps::disk::{assemble_disk, DiskSpec};
use engine::Digest;

const DISK_SIZE: u64 = 2 << 30;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Kills and reaps QEMU however the test ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The status line and body of `GET /`, or None while nothing answers. QEMU's user network
/// accepts the connection before the guest listens, then closes it: that reads as empty.
fn http_get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/").then_some(response)
}

#[test]
#[ignore = "boots a VM: set VMBUILD_TEST_ROOTFS to a Debian root tree with grub-pc, a kernel and nginx"]
fn assembled_disk_boots_and_serves_http() {
    let rootfs = PathBuf::from(
        std::env::var_os("VMBUILD_TEST_ROOTFS").expect("VMBUILD_TEST_ROOTFS: a root tree"),
    );
    let keep = std::env::var_os("VMBUILD_TEST_SCRATCH").map(PathBuf::from);
    let tmp = tempfile::tempdir_in(keep.as_deref().unwrap_or(Path::new("/var/tmp"))).unwrap();
    let dir = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let tree = tmp.path().join("tree");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();

    let t = Instant::now();
    run(
        "cp",
        &[
            "-a",
            "--reflink=auto",
            rootfs.to_str().unwrap(),
            tree.to_str().unwrap(),
        ],
    );
    eprintln!("copy of the tree: {:.1?}", t.elapsed());

    let raw = dir.join("disk.raw");
    let mut spec = DiskSpec::new(DISK_SIZE, &Digest::of_bytes(b"disk_boot test"), "root");
    spec.timestamp = Some(1_700_000_000);
    let t = Instant::now();
    let info = assemble_disk(&tree, &spec, &raw, &scratch).expect("assemble_disk");
    eprintln!("assemble_disk: {:.1?} {info:#?}", t.elapsed());
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), DISK_SIZE);

    // The filesystem fills its partition: df inside would show ~2 GiB.
    let dump = run(
        "dumpe2fs",
        &[
            "-h",
            &format!("{}?offset={}", raw.display(), info.partition_offset),
        ],
    );
    let field = |name: &str| {
        dump.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{name} in dumpe2fs output"))
    };
    let blocks: u64 = field("Block count:").parse().unwrap();
    let block_size: u64 = field("Block size:").parse().unwrap();
    assert_eq!(blocks * block_size, info.partition_size);
    assert_eq!(field("Filesystem UUID:"), info.fs_uuid);
    eprintln!("dumpe2fs: {blocks} blocks of {block_size} = partition size");

    let qcow2 = dir.join("disk.qcow2");
    let t = Instant::now();
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ],
    );
    eprintln!("qemu-img convert: {:.1?}", t.elapsed());

    let port = free_port();
    let console = dir.join("console.log");
    let accel = std::env::var("VMBUILD_TEST_ACCEL").unwrap_or_else(|_| "tcg".into());
    let t = Instant::now();
    let _qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args(["-accel", &accel, "-m", "1024", "-nographic", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-drive")
            .arg(format!("file={},format=qcow2,if=virtio", qcow2.display()))
            .args(["-netdev"])
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80"))
            .args(["-device", "virtio-net-pci,netdev=n0", "-monitor", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (package qemu-system-x86)"),
    );
    let response = loop {
        if let Some(response) = http_get(port) {
            break response;
        }
        if t.elapsed() > BOOT_TIMEOUT {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!("no HTTP answer after {BOOT_TIMEOUT:?}; console tail:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "first HTTP answer after {:.1?}: {}",
        t.elapsed(),
        response.lines().next().unwrap_or_default()
    );
    assert!(response.contains("nginx"), "{response}");
}
