//! Runs the disk step by hand: `assemble_disk ROOT OUT.raw [SIZE_MIB] [LABEL]`; set
//! `VMBUILD_FIRMWARE=uefi` for the BIOS-and-UEFI (GPT) layout, `SOURCE_DATE_EPOCH` for the
//! times mkfs writes.
//!
//! ROOT is edited in place (fstab, grub.cfg, /boot/grub/i386-pc): pass a copy. The UUID
//! derives from the absolute path of ROOT, so rerunning on the same path gives the same one.

use std::path::PathBuf;
use std::time::Instant;

use engine::steps::disk::{assemble_disk, DiskSpec, Firmware};
use engine::Digest;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: assemble_disk ROOT OUT.raw [SIZE_MIB] [LABEL]");
        std::process::exit(2);
    }
    let root = std::fs::canonicalize(&args[1]).expect("ROOT");
    let out = PathBuf::from(&args[2]);
    let size_mib: u64 = args.get(3).map_or(2048, |s| s.parse().expect("SIZE_MIB"));
    let label = args.get(4).map_or("root", String::as_str);
    let mut spec = DiskSpec::new(
        size_mib << 20,
        &Digest::of_bytes(root.as_os_str().as_encoded_bytes()),
        label,
    );
    if std::env::var("VMBUILD_FIRMWARE").is_ok_and(|f| f == "uefi") {
        spec.firmware = Firmware::BiosAndUefi;
    }
    spec.timestamp = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .map(|t| t.parse().expect("SOURCE_DATE_EPOCH: seconds"));
    let scratch = tempfile::tempdir().expect("scratch dir");
    let t = Instant::now();
    match assemble_disk(&root, &spec, &out, scratch.path()) {
        Ok(info) => println!("{info:#?}\nassembled in {:.1?}", t.elapsed()),
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("error: {msg}");
            std::process::exit(1);
        }
    }
}
