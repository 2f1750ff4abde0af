//! The EFI system partition of a BIOS-and-UEFI disk: a FAT32 filesystem made by `mkfs.fat`
//! in a scratch file, GRUB's EFI image put at the removable-media path
//! `/EFI/BOOT/BOOTX64.EFI` with mtools (so firmware finds it with no NVRAM boot entry), then
//! copied into the partition skipping zero blocks, which stay holes of the fresh image file.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::tool::{DiskTool, MCOPY, MKFS_FAT, MMD};
use super::DiskError;

/// The ESP to make.
pub struct Esp<'a> {
    /// Byte offset and size of the partition.
    pub offset: u64,
    pub size: u64,
    /// FAT's 32-bit serial (shown as XXXX-XXXX, used in fstab).
    pub volume_id: u32,
    /// GRUB's EFI application, installed as BOOTX64.EFI.
    pub efi_image: &'a [u8],
    /// For the times mtools writes (SOURCE_DATE_EPOCH); `None`: now.
    pub timestamp: Option<u64>,
}

impl Esp<'_> {
    /// Makes the ESP in `scratch` and writes it into `disk` (whose path is `disk_path`).
    pub fn build(&self, disk: &File, disk_path: &Path, scratch: &Path) -> Result<(), DiskError> {
        build(self, disk, disk_path, scratch)
    }
}

fn build(spec: &Esp, disk: &File, disk_path: &Path, scratch: &Path) -> Result<(), DiskError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Io {
            action,
            path,
            source,
        }
    };
    let esp = scratch.join("esp.img");
    let efi = scratch.join("BOOTX64.EFI");
    let _ = std::fs::remove_file(&esp);
    std::fs::write(&efi, spec.efi_image).map_err(io("write", &efi))?;

    let volume_id = format!("{:08X}", spec.volume_id);
    let kib = (spec.size / 1024).to_string();
    // -s 1: one sector per cluster keeps FAT32 above its minimum cluster count on a small ESP.
    MKFS_FAT.run(
        [
            "-C",
            "-F",
            "32",
            "-s",
            "1",
            "-n",
            "ESP",
            // Fixed times and serial; so -i must come after it to set ours.
            "--invariant",
            "-i",
            &volume_id,
        ]
        .iter()
        .map(OsStr::new)
        .chain([esp.as_os_str(), OsStr::new(&kib)]),
        &[],
    )?;
    let image = format!("{}", esp.display());
    let epoch = spec.timestamp.map(|t| t.to_string());
    let mut envs: Vec<(&str, &OsStr)> = vec![("MTOOLS_SKIP_CHECK", OsStr::new("1"))];
    if let Some(t) = &epoch {
        envs.push(("SOURCE_DATE_EPOCH", OsStr::new(t)));
    }
    MMD.run(["-i", &image, "::/EFI", "::/EFI/BOOT"], &envs)?;
    MCOPY.run(
        [
            OsStr::new("-i"),
            OsStr::new(&image),
            efi.as_os_str(),
            OsStr::new("::/EFI/BOOT/BOOTX64.EFI"),
        ],
        &envs,
    )?;
    copy_sparse(&esp, disk, disk_path, spec.offset)
}

/// Copies `from` into `to` at `offset`, skipping all-zero blocks (the target is a fresh
/// sparse file, so they already read as zeros).
fn copy_sparse(from: &Path, to: &File, to_path: &Path, offset: u64) -> Result<(), DiskError> {
    const BLOCK: usize = 64 << 10;
    let read_err = |source| DiskError::Io {
        action: "read",
        path: from.to_path_buf(),
        source,
    };
    let write_err = |source| DiskError::Io {
        action: "write the ESP into",
        path: to_path.to_path_buf(),
        source,
    };
    let mut input = File::open(from).map_err(read_err)?;
    let mut output = to;
    let mut buf = vec![0u8; BLOCK];
    let mut position = offset;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            let n = input.read(&mut buf[filled..]).map_err(read_err)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        if buf[..filled].iter().any(|&b| b != 0) {
            output.seek(SeekFrom::Start(position)).map_err(write_err)?;
            output.write_all(&buf[..filled]).map_err(write_err)?;
        }
        position += filled as u64;
    }
}
