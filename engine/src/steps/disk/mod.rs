//! The disk step: a root file tree in, a partitioned raw disk image out that boots by itself
//! with GRUB 2 — with no loop device, no mount, no udev and no chroot. Two layouts
//! ([`Firmware`]):
//!
//! `Bios` (MBR):
//!
//! | bytes           | content                                                        |
//! |-----------------|----------------------------------------------------------------|
//! | sector 0        | GRUB's boot.img + the partition table (`mbr.rs`)                |
//! | sectors 1..2048 | GRUB's core.img, then zeros (holes) (`grub.rs`)                 |
//! | 1 MiB .. end    | partition 1, active, type 0x83: ext4 with the tree (`ext4.rs`)  |
//!
//! `BiosAndUefi` (GPT, boots under SeaBIOS and OVMF alike):
//!
//! | bytes              | content                                                      |
//! |--------------------|--------------------------------------------------------------|
//! | sector 0           | protective MBR with GRUB's boot.img (`gpt.rs`)                |
//! | sectors 1..34      | GPT header and entries                                       |
//! | 1 MiB .. 2 MiB     | partition 1, BIOS boot: GRUB's core.img                      |
//! | 2 MiB .. 128 MiB   | partition 2, EFI system: FAT32, `/EFI/BOOT/BOOTX64.EFI` (`esp.rs`) |
//! | 128 MiB .. end-1 MiB | partition 3, Linux root x86-64: ext4 with the tree         |
//! | last 33 sectors    | backup GPT                                                   |
//!
//! [`assemble_disk`] **writes into the tree it is given** — the caller passes a private copy:
//! `/etc/fstab` (replaced: the root filesystem by UUID, and the ESP at `/boot/efi` with
//! `nofail` when there is one), `/boot/grub/grub.cfg` (replaced: one entry for the newest
//! `/boot/vmlinuz-*`), `/boot/grub/<platform>/` (GRUB's modules and images, as grub-install
//! would leave them) and `/etc/default/grub.d/50-vmbuild-console.cfg`
//! (so that `update-grub` keeps the serial console). The guest keeps working with its own
//! `grub-pc` package afterwards: `grub-probe`, `update-grub` and `grub-install /dev/vda` work
//! inside it, and the disk boots again afterwards (checked on booted images of both layouts).
//!
//! Determinism: the UUID, ext4 hash seed and MBR disk signature derive from the spec, the
//! feature set from a pinned mke2fs.conf, mkfs's own times from `timestamp`, and mkfs -d walks
//! directories in sorted order. Not yet byte-reproducible: e2fsprogs 1.47.0 copies each
//! inode's *ctime* from the host tree, and ctime cannot be set from user space, so two
//! builds differ in those fields (and the checksums covering them).

mod esp;
mod ext4;
mod gpt;
mod grub;
mod mbr;
pub mod step;
mod tool;

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::Digest;

pub use grub::Kernel;

const MIB: u64 = 1 << 20;
/// Disk sizes are whole MiB: partition ends stay aligned and every converter accepts them.
pub const SIZE_ALIGN: u64 = MIB;
/// Smallest disk accepted: room for the boot partitions plus a filesystem worth having.
pub const MIN_SIZE: u64 = 256 * MIB;
/// Largest disk an MBR partition table can describe with 512-byte sectors (also the limit
/// for GPT here: the protective MBR and BIOS booting gain nothing beyond it).
pub const MAX_SIZE: u64 = (u32::MAX as u64 + 1) * mbr::SECTOR;

/// Which firmware the disk boots under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Firmware {
    /// BIOS only, on an MBR disk: the layout virt-v2v and every hypervisor take as is.
    #[default]
    Bios,
    /// BIOS and UEFI, on a GPT disk with a BIOS boot partition and an ESP. Needs GRUB's
    /// x86_64-efi files (package grub-efi-amd64-bin, in the guest or on the host), mkfs.fat
    /// (dosfstools) and mtools.
    BiosAndUefi,
}

/// Where things go on the disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Sector where GRUB's BIOS core.img starts, and how many sectors it may use.
    core_lba: u64,
    core_room: u64,
    /// The ESP, if any: offset and size.
    esp: Option<(u64, u64)>,
    root_offset: u64,
    root_size: u64,
    /// Number (from 1) of the root partition, for GRUB's prefix.
    root_partition: u32,
}

impl Layout {
    fn new(firmware: Firmware, size: u64) -> Layout {
        match firmware {
            Firmware::Bios => Layout {
                core_lba: 1,
                core_room: MIB / mbr::SECTOR - 1,
                esp: None,
                root_offset: MIB,
                root_size: size - MIB,
                root_partition: 1,
            },
            Firmware::BiosAndUefi => Layout {
                core_lba: MIB / mbr::SECTOR,
                core_room: MIB / mbr::SECTOR,
                esp: Some((2 * MIB, 126 * MIB)),
                root_offset: 128 * MIB,
                // The last MiB holds the backup GPT (its last 33 sectors) and stays aligned.
                root_size: size - 129 * MIB,
                root_partition: 3,
            },
        }
    }
}

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
    /// BIOS only (MBR) or BIOS and UEFI (GPT).
    pub firmware: Firmware,
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
            firmware: Firmware::Bios,
        }
    }
}

/// What was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub size_bytes: u64,
    pub firmware: Firmware,
    /// Byte offset of the root partition (and its filesystem) in the image.
    pub partition_offset: u64,
    pub partition_size: u64,
    pub fs_uuid: String,
    /// The disk identifier: the MBR disk signature (8 hex digits) or the GPT disk GUID.
    pub disk_id: String,
    /// The ESP (offset, size) in bytes, on a BIOS-and-UEFI disk.
    pub esp: Option<(u64, u64)>,
    /// The kernel grub.cfg boots.
    pub kernel: Kernel,
    /// Where GRUB's files came from, per platform: the guest's `/usr/lib/grub/<platform>`,
    /// or the host's when the guest lacks them.
    pub grub_dirs: Vec<PathBuf>,
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
/// for intermediate files (GRUB images, mke2fs.conf, the ESP). The image is written to a
/// temporary file beside `out_raw` and renamed over it when complete.
pub fn assemble_disk(
    root: &Path,
    spec: &DiskSpec,
    out_raw: &Path,
    scratch: &Path,
) -> Result<DiskInfo, DiskError> {
    validate(spec)?;
    let layout = Layout::new(spec.firmware, spec.size_bytes);
    let label = match spec.firmware {
        Firmware::Bios => grub::Label::Msdos,
        Firmware::BiosAndUefi => grub::Label::Gpt,
    };
    let derive = |what: &str| {
        derived_uuid(
            &format!("vmbuild 2026 disk {what}"),
            spec.fs_uuid.as_bytes(),
        )
    };

    // GRUB first: it fails fast when tools are missing, before the long mkfs.
    let kernel = grub::find_kernel(root)?;
    let bios_dir = grub::platform_dir(root, grub::Platform::I386Pc)?;
    let mut core = grub::make_image(
        grub::Platform::I386Pc,
        &bios_dir,
        label,
        layout.root_partition,
        scratch,
    )?;
    grub::patch_core(&mut core, layout.core_lba, layout.core_room)?;
    let mut grub_dirs = vec![bios_dir.clone()];
    let efi = match layout.esp {
        None => None,
        Some(_) => {
            let efi_dir = grub::platform_dir(root, grub::Platform::X86_64Efi)?;
            let image = grub::make_image(
                grub::Platform::X86_64Efi,
                &efi_dir,
                label,
                layout.root_partition,
                scratch,
            )?;
            grub_dirs.push(efi_dir.clone());
            Some((efi_dir, image))
        }
    };
    let esp_volume_id = u32::from_str_radix(&derive("esp volume id")[..8], 16).expect("hex");

    // The guest's view of its own disk.
    write_file(
        root,
        "etc/fstab",
        &fstab(&spec.fs_uuid, layout.esp.map(|_| esp_volume_id)),
    )?;
    write_file(
        root,
        "boot/grub/grub.cfg",
        &grub::config(&kernel, &spec.fs_uuid),
    )?;
    write_file(root, grub::DEFAULTS_DROPIN_PATH, grub::DEFAULTS_DROPIN)?;
    grub::install_files(root, grub::Platform::I386Pc, &bios_dir, &core)?;
    if let Some((efi_dir, image)) = &efi {
        grub::install_files(root, grub::Platform::X86_64Efi, efi_dir, image)?;
        let mount_point = root.join("boot/efi");
        fs::create_dir_all(&mount_point).map_err(|source| DiskError::Io {
            action: "create",
            path: mount_point,
            source,
        })?;
    }

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

    let hash_seed = derive("ext4 hash seed");
    ext4::Mkfs {
        root,
        image: tmp.path(),
        offset: layout.root_offset,
        size: layout.root_size,
        uuid: &spec.fs_uuid,
        hash_seed: &hash_seed,
        label: &spec.label,
        timestamp: spec.timestamp,
    }
    .run(scratch)?;
    let fs_size = ext4::filesystem_size(tmp.path(), layout.root_offset)?;
    if fs_size != layout.root_size {
        return Err(DiskError::FilesystemSize {
            fs_size,
            partition_size: layout.root_size,
        });
    }
    if let (Some((offset, size)), Some((_, image))) = (layout.esp, &efi) {
        esp::Esp {
            offset,
            size,
            volume_id: esp_volume_id,
            efi_image: image,
            timestamp: spec.timestamp,
        }
        .build(tmp.as_file(), tmp.path(), scratch)?;
    }

    // Tables and boot code last: mkfs reopened the file by name, and a discard must not
    // reach them.
    let sectors = spec.size_bytes / mbr::SECTOR;
    let lba = |bytes: u64| bytes / mbr::SECTOR;
    let (mut sector0, gpt_parts, disk_id) = match spec.firmware {
        Firmware::Bios => {
            let signature_hex = derive("mbr signature");
            let signature = u32::from_str_radix(&signature_hex[..8], 16).expect("hex");
            let sector0 = mbr::sector0(
                mbr::Partition {
                    first_lba: lba(layout.root_offset) as u32,
                    sectors: lba(layout.root_size) as u32,
                    kind: mbr::Kind::Linux,
                },
                signature,
            );
            (sector0, None, format!("{signature:08x}"))
        }
        Firmware::BiosAndUefi => {
            let (esp_offset, esp_size) = layout.esp.expect("a BIOS-and-UEFI layout has an ESP");
            let disk_guid = derive("gpt disk guid");
            let entries = [
                gpt::Entry {
                    type_guid: gpt::TYPE_BIOS_BOOT,
                    guid: derive("gpt bios boot partition guid"),
                    first_lba: layout.core_lba,
                    sectors: layout.core_room,
                    name: "bios",
                },
                gpt::Entry {
                    type_guid: gpt::TYPE_ESP,
                    guid: derive("gpt esp partition guid"),
                    first_lba: lba(esp_offset),
                    sectors: lba(esp_size),
                    name: "esp",
                },
                gpt::Entry {
                    type_guid: gpt::TYPE_ROOT_X86_64,
                    guid: derive("gpt root partition guid"),
                    first_lba: lba(layout.root_offset),
                    sectors: lba(layout.root_size),
                    name: "root",
                },
            ];
            let table = gpt::table(sectors, &disk_guid, &entries);
            (table.sector0, Some(table), disk_guid)
        }
    };
    grub::install_boot_code(&bios_dir, &mut sector0, layout.core_lba)?;
    let mut file: &File = tmp.as_file();
    let mut write_at = |offset: u64, bytes: &[u8], what: &'static str| {
        file.seek(SeekFrom::Start(offset)).map_err(io("seek in"))?;
        file.write_all(bytes).map_err(io(what))
    };
    write_at(0, &sector0, "write the MBR to")?;
    if let Some(table) = &gpt_parts {
        write_at(mbr::SECTOR, &table.primary, "write the GPT to")?;
        write_at(
            table.backup_offset,
            &table.backup,
            "write the backup GPT to",
        )?;
    }
    write_at(
        layout.core_lba * mbr::SECTOR,
        &core,
        "write GRUB's core image to",
    )?;
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
        firmware: spec.firmware,
        partition_offset: layout.root_offset,
        partition_size: layout.root_size,
        fs_uuid: spec.fs_uuid.clone(),
        disk_id,
        esp: layout.esp,
        kernel,
        grub_dirs,
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
        return bad("smaller than 256 MiB");
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

/// The guest's fstab: the root filesystem, and the ESP when there is one (`nofail`, no fsck:
/// the guest may lack dosfstools, and booting must not depend on it).
fn fstab(fs_uuid: &str, esp_volume_id: Option<u32>) -> String {
    let mut out = format!(
        "# Written by vmbuild: <file system> <mount point> <type> <options> <dump> <pass>\n\
         UUID={fs_uuid} / ext4 errors=remount-ro 0 1\n"
    );
    if let Some(id) = esp_volume_id {
        out.push_str(&format!(
            "UUID={:04X}-{:04X} /boot/efi vfat umask=0077,nofail 0 0\n",
            id >> 16,
            id & 0xFFFF
        ));
    }
    out
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
            firmware: Firmware::Bios,
        };
        assert!(validate(&spec(2 << 30)).is_ok());
        assert!(validate(&spec((2 << 30) + 512)).is_err());
        assert!(validate(&spec(128 << 20)).is_err());
        assert!(validate(&spec(4 << 40)).is_err());
        let mut long = spec(2 << 30);
        long.label = "a-label-longer-than-16".into();
        assert!(matches!(validate(&long), Err(DiskError::BadLabel { .. })));
        long.fs_uuid = "not-a-uuid".into();
        long.label = "root".into();
        assert!(matches!(validate(&long), Err(DiskError::BadUuid { .. })));
    }
}
