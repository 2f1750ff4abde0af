//! Proof that the disk step makes an image that boots by itself: assemble a 2 GiB disk from
//! a Debian root tree (`VMBUILD_TEST_ROOTFS`, with a kernel, grub-pc, systemd and nginx, and
//! DHCP on the first NIC), convert it to qcow2, boot it under QEMU with no `-kernel`, and wait
//! for nginx to answer through a forwarded port. The MBR disk boots under SeaBIOS; the GPT
//! disk under OVMF (UEFI) and then SeaBIOS (the tree or the host needs grub-efi-amd64-bin).
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

use engine::steps::disk::{assemble_disk, DiskSpec, Firmware};
use engine::Digest;

const DISK_SIZE: u64 = 2 << 30;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

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
fn bios_mbr_disk_boots_and_serves_http() {
    let (dir, _tmp, qcow2) = assemble(Firmware::Bios, "bios");
    boot_and_wait_for_http(&dir, &qcow2, false);
}

#[test]
#[ignore = "boots a VM twice: set VMBUILD_TEST_ROOTFS to a Debian root tree with grub-pc, grub-efi-amd64-bin, a kernel and nginx"]
fn hybrid_gpt_disk_boots_under_uefi_and_bios() {
    let (dir, _tmp, qcow2) = assemble(Firmware::BiosAndUefi, "hybrid");
    boot_and_wait_for_http(&dir, &qcow2, true);
    boot_and_wait_for_http(&dir, &qcow2, false);
}

/// Copies the tree, assembles `firmware`'s disk into `<scratch>/<name>/disk.raw`, checks the
/// filesystem size and converts to qcow2. Returns the folder, its guard and the qcow2 path.
fn assemble(firmware: Firmware, name: &str) -> (PathBuf, tempfile::TempDir, PathBuf) {
    let rootfs = PathBuf::from(
        std::env::var_os("VMBUILD_TEST_ROOTFS").expect("VMBUILD_TEST_ROOTFS: a root tree"),
    );
    let keep = std::env::var_os("VMBUILD_TEST_SCRATCH").map(PathBuf::from);
    let tmp = tempfile::tempdir_in(keep.as_deref().unwrap_or(Path::new("/var/tmp"))).unwrap();
    let dir = keep
        .map(|k| k.join(name))
        .unwrap_or_else(|| tmp.path().to_path_buf());
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
    let mut spec = DiskSpec::new(DISK_SIZE, &Digest::of_bytes(name.as_bytes()), "root");
    spec.timestamp = Some(1_700_000_000);
    spec.firmware = firmware;
    let t = Instant::now();
    let info = assemble_disk(&tree, &spec, &raw, &scratch).expect("assemble_disk");
    eprintln!("assemble_disk: {:.1?} {info:#?}", t.elapsed());
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), DISK_SIZE);

    // The partition table as fdisk's sfdisk reads it (it checks GPT checksums and backups).
    let table = run("sfdisk", &["--dump", raw.to_str().unwrap()]);
    eprintln!("{table}");
    let first = info.partition_offset / 512;
    assert!(
        table.contains(&format!(
            "start={first:>12}, size={:>12}",
            info.partition_size / 512
        )),
        "root partition in {table}"
    );

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

    if let Some((esp_offset, _)) = info.esp {
        // fstab mounts the ESP by the serial mkfs.fat was given.
        let image = format!("{}@@{esp_offset}", raw.display());
        let minfo = Command::new("minfo")
            .args(["-i", &image, "::"])
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .expect("minfo (package mtools)");
        let minfo = String::from_utf8_lossy(&minfo.stdout);
        let serial = minfo
            .lines()
            .find_map(|l| l.trim().strip_prefix("serial number: "))
            .expect("serial number in minfo output")
            .to_string();
        let fstab = run(
            "debugfs",
            &[
                "-R",
                "cat /etc/fstab",
                &format!("{}?offset={}", raw.display(), info.partition_offset),
            ],
        );
        let esp_line = format!("UUID={}-{} /boot/efi ", &serial[..4], &serial[4..]);
        assert!(fstab.contains(&esp_line), "{esp_line} in {fstab}");
    }

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
    (dir, tmp, qcow2)
}

/// Boots `qcow2` (with OVMF when `uefi`) until nginx answers, then kills QEMU.
fn boot_and_wait_for_http(dir: &Path, qcow2: &Path, uefi: bool) {
    let firmware = if uefi { "uefi" } else { "bios" };
    let port = free_port();
    let console = dir.join(format!("console-{firmware}.log"));
    let accel = std::env::var("VMBUILD_TEST_ACCEL").unwrap_or_else(|_| "tcg".into());
    let mut command = Command::new("qemu-system-x86_64");
    command.args(["-accel", &accel, "-m", "1024", "-nographic", "-no-reboot"]);
    if uefi {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).expect("OVMF (package ovmf)");
        command
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    command
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!("file={},format=qcow2,if=virtio", qcow2.display()))
        .args(["-netdev"])
        .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80"))
        .args(["-device", "virtio-net-pci,netdev=n0", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let t = Instant::now();
    let _qemu = Qemu(
        command
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
            panic!("{firmware}: no HTTP answer after {BOOT_TIMEOUT:?}; console tail:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "{firmware}: first HTTP answer after {:.1?}: {}",
        t.elapsed(),
        response.lines().next().unwrap_or_default()
    );
    assert!(response.contains("nginx"), "{response}");
}
