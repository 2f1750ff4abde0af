//! The disk step: a root file tree in, a partitioned raw disk image out that boots by itself
//! (BIOS, GRUB 2 on an MBR disk) — with no loop device, no mount, no udev and no chroot.
//!
//! Layout of the image:
//!
//! | bytes                | content                                                   |
//! |----------------------|-----------------------------------------------------------|
//! | sector 0             | GRUB's boot.img + the partition table ([`mbr`])           |
//! | sectors 1..2048      | GRUB's core.img, then zeros (holes) ([`grub`])            |
//! | 1 MiB .. end         | partition 1, active, type 0x83: ext4 with the tree ([`ext4`]) |
//!
//! [`assemble_disk`] **writes into the tree it is given** — the caller passes a private copy:
//! `/etc/fstab` (replaced: the root filesystem by UUID), `/boot/grub/grub.cfg` (replaced: one
//! entry for the newest `/boot/vmlinuz-*`), `/boot/grub/i386-pc/` (GRUB's modules, core.img
//! and boot.img, as grub-install would leave them) and `/etc/default/grub.d/50-vmbuild-console.cfg`
//! (so that `update-grub` keeps the serial console). The guest keeps working with its own
//! `grub-pc` package afterwards: `grub-probe`, `update-grub` and `grub-install /dev/vda` work
//! inside it (checked on a booted image).
//!
//! Determinism: the UUID, ext4 hash seed and MBR disk signature derive from the spec, the
//! feature set from a pinned mke2fs.conf, mkfs's own times from `timestamp`, and mkfs -d walks
//! directories in sorted order. Not yet byte-reproducible: e2fsprogs 1.47.0 copies each
//! inode's *ctime* from the host tree, and ctime cannot be set from user space, so two
//! builds differ in those fields (and the checksums covering them).

mod ext4;
mod grub;
mod mbr;
mod tool;

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::Digest;

pub use grub::Kernel;

/// The first partition starts at 1 MiB (sector 2048), as every modern tool aligns it.
pub const PARTITION_OFFSET: u64 = 1 << 20;
/// Disk sizes are whole MiB: partition ends stay aligned and every converter accepts them.
pub const SIZE_ALIGN: u64 = 1 << 20;
/// Smallest disk accepted: room for the gap plus a filesystem worth having.
pub const MIN_SIZE: u64 = 64 << 20;
/// Largest disk an MBR partition table can describe with 512-byte sectors.
pub const MAX_SIZE: u64 = (u32::MAX as u64 + 1) * mbr::SECTOR;

/// What disk to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Size of the raw image: a whole number of MiB, from 64 MiB to 2 TiB.
    pub size_bytes: u64,
    /// UUID of the root filesystem (lower-case, hyphenated), used by fstab and grub.cfg.
    /// [`DiskSpec::new`] derives it from the step's input digest.
    pub fs_uuid: String,
    /// ext4 volume label, at most 16 bytes.
    pub label: String,
    /// Seconds since the epoch for the times mkfs writes itself (superblock, root directory,
    /// lost+found); `None` means now. Times of files come from the tree.
    pub timestamp: Option<u64>,
}

impl DiskSpec {
    /// A spec whose filesystem UUID derives from `seed` (the step's input digest), so a
    /// rebuild from the same inputs gets the same UUID.
    pub fn new(size_bytes: u64, seed: &Digest, label: impl Into<String>) -> DiskSpec {
        DiskSpec {
            size_bytes,
            fs_uuid: derived_uuid("vmbuild 2026 disk filesystem uuid", &seed.0),
            label: label.into(),
            timestamp: None,
        }
    }
}

/// What was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub size_bytes: u64,
    /// Byte offset of the root partition (and its filesystem) in the image.
    pub partition_offset: u64,
    pub partition_size: u64,
    pub fs_uuid: String,
    /// The MBR disk signature (also called the disk identifier).
    pub disk_signature: u32,
    /// The kernel grub.cfg boots.
    pub kernel: Kernel,
    /// Where GRUB's i386-pc files came from: the guest's `/usr/lib/grub/i386-pc`, or the
    /// host's when the guest lacks grub-pc-bin.
    pub grub_dir: PathBuf,
}

/// Why a disk could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("`{program}` is not installed: install the Debian package `{package}`")]
    ToolMissing {
        program: &'static str,
        package: &'static str,
    },
    #[error("GRUB's i386-pc files are in none of {searched:?}: install the Debian package `{package}` (in the guest or on the build host)")]
    GrubFilesMissing {
        searched: Vec<PathBuf>,
        package: &'static str,
    },
    #[error("could not start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr_tail}")]
    ToolFailed {
        command: String,
        status: ExitStatus,
        stderr_tail: String,
    },
    #[error("could not {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk size {size_bytes} bytes: {reason}")]
    BadSize {
        size_bytes: u64,
        reason: &'static str,
    },
    #[error("`{uuid}` is not a UUID like 01234567-89ab-cdef-0123-456789abcdef")]
    BadUuid { uuid: String },
    #[error("filesystem label `{label}` is longer than 16 bytes")]
    BadLabel { label: String },
    #[error("no kernel (`vmlinuz-*`) in `{boot_dir}`: install a linux-image package in the tree")]
    NoKernel { boot_dir: PathBuf },
    #[error(
        "GRUB core image is {sectors} sectors; the gap before the partition holds {gap_sectors}"
    )]
    CoreImageSize { sectors: u64, gap_sectors: u64 },
    #[error("{what} does not look like GRUB 2's i386-pc image")]
    UnexpectedGrubImage { what: &'static str },
    #[error("no ext4 filesystem at offset {offset} of `{image}` after mkfs")]
    NoFilesystem { image: PathBuf, offset: u64 },
    #[error("the filesystem is {fs_size} bytes but its partition is {partition_size}")]
    FilesystemSize { fs_size: u64, partition_size: u64 },
}

/// Makes `out_raw`, a bootable raw disk image of `spec.size_bytes`, from the tree `root`
/// (which it edits first: see the module documentation). `scratch` is an existing directory
/// for intermediate files (core.img, mke2fs.conf). The image is written to a temporary file
/// beside `out_raw` and renamed over it when complete.
pub fn assemble_disk(
    root: &Path,
    spec: &DiskSpec,
    out_raw: &Path,
    scratch: &Path,
) -> Result<DiskInfo, DiskError> {
    validate(spec)?;
    let partition_size = spec.size_bytes - PARTITION_OFFSET;
    let first_lba = PARTITION_OFFSET / mbr::SECTOR;
    let disk_signature = u32::from_le_bytes(
        blake3::derive_key("vmbuild 2026 disk mbr signature", spec.fs_uuid.as_bytes())[..4]
            .try_into()
            .expect("4 bytes"),
    );

    // GRUB first: it fails fast when tools are missing, before the long mkfs.
    let kernel = grub::find_kernel(root)?;
    let grub_dir = grub::platform_dir(root)?;
    let core_lba = 1;
    let mut core = grub::make_core(&grub_dir, scratch)?;
    grub::patch_core(&mut core, core_lba, first_lba - core_lba)?;

    // The guest's view of its own disk.
    write_file(root, "etc/fstab", &fstab(&spec.fs_uuid))?;
    write_file(
        root,
        "boot/grub/grub.cfg",
        &grub::config(&kernel, &spec.fs_uuid),
    )?;
    write_file(root, grub::DEFAULTS_DROPIN_PATH, grub::DEFAULTS_DROPIN)?;
    grub::install_files(root, &grub_dir, &core)?;

    // A fresh sparse file: no stale bytes anywhere.
    let parent = out_raw
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".disk-")
        .suffix(".raw.partial")
        .tempfile_in(parent)
        .map_err(|source| DiskError::Io {
            action: "create a temporary file in",
            path: parent.to_path_buf(),
            source,
        })?;
    let io = |action: &'static str| {
        let path = tmp.path().to_path_buf();
        move |source| DiskError::Io {
            action,
            path,
            source,
        }
    };
    tmp.as_file().set_len(spec.size_bytes).map_err(io("size"))?;

    let hash_seed = derived_uuid("vmbuild 2026 disk ext4 hash seed", spec.fs_uuid.as_bytes());
    ext4::Mkfs {
        root,
        image: tmp.path(),
        offset: PARTITION_OFFSET,
        size: partition_size,
        uuid: &spec.fs_uuid,
        hash_seed: &hash_seed,
        label: &spec.label,
        timestamp: spec.timestamp,
    }
    .run(scratch)?;
    let fs_size = ext4::filesystem_size(tmp.path(), PARTITION_OFFSET)?;
    if fs_size != partition_size {
        return Err(DiskError::FilesystemSize {
            fs_size,
            partition_size,
        });
    }

    let mut sector0 = mbr::sector0(
        mbr::Partition {
            first_lba: first_lba as u32,
            sectors: (partition_size / mbr::SECTOR) as u32,
        },
        disk_signature,
    );
    grub::install_boot_code(&grub_dir, &mut sector0, core_lba)?;
    // mkfs reopened the file by name; write through our handle after it is done.
    let mut file: &File = tmp.as_file();
    file.seek(SeekFrom::Start(0)).map_err(io("seek in"))?;
    file.write_all(&sector0).map_err(io("write the MBR to"))?;
    file.seek(SeekFrom::Start(core_lba * mbr::SECTOR))
        .map_err(io("seek in"))?;
    file.write_all(&core)
        .map_err(io("write GRUB's core image to"))?;
    // tempfile creates 0600; an image is an ordinary artifact.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(io("set the mode of"))?;
    file.sync_all().map_err(io("sync"))?;
    tmp.persist(out_raw).map_err(|e| DiskError::Io {
        action: "rename the finished image to",
        path: out_raw.to_path_buf(),
        source: e.error,
    })?;

    Ok(DiskInfo {
        size_bytes: spec.size_bytes,
        partition_offset: PARTITION_OFFSET,
        partition_size,
        fs_uuid: spec.fs_uuid.clone(),
        disk_signature,
        kernel,
        grub_dir,
    })
}

fn validate(spec: &DiskSpec) -> Result<(), DiskError> {
    let bad = |reason| {
        Err(DiskError::BadSize {
            size_bytes: spec.size_bytes,
            reason,
        })
    };
    if spec.size_bytes % SIZE_ALIGN != 0 {
        return bad("not a whole number of MiB");
    }
    if spec.size_bytes < MIN_SIZE {
        return bad("smaller than 64 MiB");
    }
    if spec.size_bytes > MAX_SIZE {
        return bad("larger than the 2 TiB an MBR partition table can describe");
    }
    if !is_uuid(&spec.fs_uuid) {
        return Err(DiskError::BadUuid {
            uuid: spec.fs_uuid.clone(),
        });
    }
    if spec.label.len() > 16 {
        return Err(DiskError::BadLabel {
            label: spec.label.clone(),
        });
    }
    Ok(())
}

/// Lower-case hyphenated 8-4-4-4-12 hex.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

/// A UUID from blake3 in key-derivation mode, with the RFC 4122 variant and version-4 bits
/// set (it is as unpredictable as a random one, but the same for the same input).
fn derived_uuid(context: &str, material: &[u8]) -> String {
    let key = blake3::derive_key(context, material);
    let mut b: [u8; 16] = key[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn fstab(fs_uuid: &str) -> String {
    format!(
        "# Written by vmbuild: <file system> <mount point> <type> <options> <dump> <pass>\n\
         UUID={fs_uuid} / ext4 errors=remount-ro 0 1\n"
    )
}

/// Writes `content` to `root/relative`, creating parent directories, mode 0644.
fn write_file(root: &Path, relative: &str, content: &str) -> Result<(), DiskError> {
    let path = root.join(relative);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| DiskError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    // Replace, never write through: a symlink in the tree must not redirect us outside it.
    let _ = fs::remove_file(&path);
    fs::write(&path, content).map_err(|source| DiskError::Io {
        action: "write",
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_derived_and_well_formed() {
        let seed = Digest::of_bytes(b"inputs");
        let a = DiskSpec::new(2 << 30, &seed, "root");
        let b = DiskSpec::new(2 << 30, &seed, "root");
        assert_eq!(a.fs_uuid, b.fs_uuid);
        assert!(is_uuid(&a.fs_uuid), "{}", a.fs_uuid);
        assert_eq!(&a.fs_uuid[14..15], "4");
        let other = DiskSpec::new(2 << 30, &Digest::of_bytes(b"other"), "root");
        assert_ne!(a.fs_uuid, other.fs_uuid);
    }

    #[test]
    fn sizes_are_checked() {
        let spec = |size_bytes| DiskSpec {
            size_bytes,
            fs_uuid: "0f0e0d0c-0b0a-4908-8706-050403020100".into(),
            label: "root".into(),
            timestamp: None,
        };
        assert!(validate(&spec(2 << 30)).is_ok());
        assert!(validate(&spec((2 << 30) + 512)).is_err());
        assert!(validate(&spec(32 << 20)).is_err());
        assert!(validate(&spec(4 << 40)).is_err());
        let mut long = spec(2 << 30);
        long.label = "a-label-longer-than-16".into();
        assert!(matches!(validate(&long), Err(DiskError::BadLabel { .. })));
        long.fs_uuid = "not-a-uuid".into();
        long.label = "root".into();
        assert!(matches!(validate(&long), Err(DiskError::BadUuid { .. })));
    }
}
