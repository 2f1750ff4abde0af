//! GRUB, installed into an image file with no device. For BIOS: the core image built by
//! `grub-mkimage`, embedded in the gap after the MBR (or in the GPT BIOS boot partition), the
//! boot sector (`boot.img`) patched to load it. For UEFI: a `grub-mkimage` EFI application
//! for the ESP's removable-media path. In both cases the modules are copied to
//! `/boot/grub/<platform>` in the guest tree, and [`config`] is the `grub.cfg` it boots with.
//!
//! This does by hand what `grub-bios-setup` does for an embedded core: boot.img's
//! kernel-sector field points at the first sector of core.img, and the blocklist at the end of
//! core.img's first sector (diskboot.img) covers the rest of it.

use std::fs;
use std::path::{Path, PathBuf};

use super::mbr::{BOOT_CODE_END, SECTOR};
use super::tool::{DiskTool, GRUB_MKIMAGE};
use super::DiskError;

/// boot.img: the 64-bit LBA of core.img's first sector (`GRUB_BOOT_MACHINE_KERNEL_SECTOR`).
const KERNEL_SECTOR: usize = 0x5c;
/// boot.img: the boot drive, 0xff meaning "the drive the BIOS booted from" (in %dl).
const BOOT_DRIVE: usize = 0x64;
/// boot.img: a 2-byte jump over the code that forces %dl to 0x80 for BIOSes that pass a
/// floppy number; grub-bios-setup replaces it with two NOPs when installing on a hard disk.
const DRIVE_CHECK: usize = 0x66;
/// diskboot.img (core.img's first sector): the last blocklist entry, 12 bytes before the end:
/// start sector (u64 LE), sector count (u16 LE), load segment (u16 LE).
const BLOCKLIST: usize = 512 - 12;
/// The segment diskboot loads the rest of core.img to (0x800 + 0x20): grub-mkimage writes it.
const CORE_SEGMENT: u16 = 0x0820;

/// A GRUB platform this step installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// BIOS (package grub-pc-bin).
    I386Pc,
    /// 64-bit UEFI (package grub-efi-amd64-bin).
    X86_64Efi,
}

impl Platform {
    /// GRUB's name for it: the directory under `/usr/lib/grub` and `/boot/grub`, and the
    /// `--format` of grub-mkimage.
    pub fn name(self) -> &'static str {
        match self {
            Platform::I386Pc => "i386-pc",
            Platform::X86_64Efi => "x86_64-efi",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Platform::I386Pc => "grub-pc-bin",
            Platform::X86_64Efi => "grub-efi-amd64-bin",
        }
    }

    /// Files whose presence says the directory is usable.
    fn markers(self) -> &'static [&'static str] {
        match self {
            Platform::I386Pc => &["kernel.img", "boot.img", "diskboot.img"],
            Platform::X86_64Efi => &["kernel.img", "normal.mod"],
        }
    }

    /// What grub-install calls the image it builds, kept in `/boot/grub/<platform>`.
    fn image_name(self) -> &'static str {
        match self {
            Platform::I386Pc => "core.img",
            Platform::X86_64Efi => "core.efi",
        }
    }
}

/// The partition table GRUB's image must read to find `/boot/grub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Msdos,
    Gpt,
}

impl Label {
    fn name(self) -> &'static str {
        match self {
            Label::Msdos => "msdos",
            Label::Gpt => "gpt",
        }
    }
}

/// Where the image looks for its modules and grub.cfg: partition `partition` (from 1) of the
/// disk it was loaded from.
pub fn prefix(label: Label, partition: u32) -> String {
    format!("(,{}{partition})/boot/grub", label.name())
}

/// The kernel and initrd the guest boots, as paths inside the root tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub version: String,
    pub vmlinuz: String,
    pub initrd: Option<String>,
}

/// The directory of GRUB's files for `platform`: the guest's own when it has them (so the
/// image and the modules on disk match what the guest's grub-install would use), the build
/// host's otherwise.
pub fn platform_dir(root: &Path, platform: Platform) -> Result<PathBuf, DiskError> {
    let relative = Path::new("usr/lib/grub").join(platform.name());
    let searched = vec![root.join(&relative), Path::new("/").join(&relative)];
    searched
        .iter()
        .find(|dir| platform.markers().iter().all(|m| dir.join(m).is_file()))
        .cloned()
        .ok_or(DiskError::GrubFilesMissing {
            searched,
            package: platform.package(),
        })
}

/// Builds GRUB's image for `platform` with `grub-mkimage` into `scratch` and returns its
/// bytes. Built in: the disk driver (BIOS), the partition table and ext2; the rest loads
/// from the prefix.
pub fn make_image(
    platform: Platform,
    platform_dir: &Path,
    label: Label,
    root_partition: u32,
    scratch: &Path,
) -> Result<Vec<u8>, DiskError> {
    let out = scratch.join(platform.image_name());
    let mut args: Vec<std::ffi::OsString> = vec![
        format!("--format={}", platform.name()).into(),
        "--directory".into(),
        platform_dir.into(),
        "--prefix".into(),
        prefix(label, root_partition).into(),
        "--output".into(),
        out.clone().into(),
    ];
    if platform == Platform::I386Pc {
        args.push("biosdisk".into());
    }
    args.push(format!("part_{}", label.name()).into());
    args.push("ext2".into());
    GRUB_MKIMAGE.run(args, &[])?;
    fs::read(&out).map_err(|source| DiskError::Io {
        action: "read the GRUB image",
        path: out,
        source,
    })
}

/// Pads `core` to whole sectors and points its diskboot blocklist at the sectors following
/// `core_lba`, where it will be written. `gap_sectors` is room available (from `core_lba`
/// up to the first partition).
pub fn patch_core(core: &mut Vec<u8>, core_lba: u64, gap_sectors: u64) -> Result<(), DiskError> {
    let sector = SECTOR as usize;
    core.resize(core.len().div_ceil(sector) * sector, 0);
    let sectors = (core.len() / sector) as u64;
    if sectors < 2 || sectors > gap_sectors {
        return Err(DiskError::CoreImageSize {
            sectors,
            gap_sectors,
        });
    }
    let segment = u16::from_le_bytes([core[BLOCKLIST + 10], core[BLOCKLIST + 11]]);
    if segment != CORE_SEGMENT {
        return Err(DiskError::UnexpectedGrubImage {
            what: "core.img (diskboot blocklist segment)",
        });
    }
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    Ok(())
}

/// Fills the boot code area of `mbr` with `boot.img`, patched to load core.img from
/// `core_lba` off the boot drive. The disk signature and partition table are kept.
pub fn install_boot_code(
    platform_dir: &Path,
    mbr: &mut [u8; 512],
    core_lba: u64,
) -> Result<(), DiskError> {
    let path = platform_dir.join("boot.img");
    let boot = fs::read(&path).map_err(|source| DiskError::Io {
        action: "read",
        path: path.clone(),
        source,
    })?;
    if boot.len() != 512 || boot[DRIVE_CHECK] != 0xEB {
        return Err(DiskError::UnexpectedGrubImage { what: "boot.img" });
    }
    mbr[..BOOT_CODE_END].copy_from_slice(&boot[..BOOT_CODE_END]);
    mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    mbr[BOOT_DRIVE] = 0xFF;
    mbr[DRIVE_CHECK] = 0x90;
    mbr[DRIVE_CHECK + 1] = 0x90;
    Ok(())
}

/// Copies GRUB's modules and lists for `platform` into `<root>/boot/grub/<platform>`, with
/// the image (and boot.img for BIOS), as grub-install would: GRUB loads `normal`, `linux` and
/// the rest from there.
pub fn install_files(
    root: &Path,
    platform: Platform,
    platform_dir: &Path,
    image: &[u8],
) -> Result<(), DiskError> {
    let target = root.join("boot/grub").join(platform.name());
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(&target).map_err(io("create", &target))?;
    let entries = fs::read_dir(platform_dir).map_err(io("list", platform_dir))?;
    for entry in entries {
        let entry = entry.map_err(io("list", platform_dir))?;
        let name = entry.file_name();
        let wanted = Path::new(&name)
            .extension()
            .is_some_and(|ext| ext == "mod" || ext == "lst" || ext == "o")
            || name == "boot.img";
        if wanted {
            let to = target.join(&name);
            // Replace, never write through: the tree may be hard links into the store.
            let _ = fs::remove_file(&to);
            fs::copy(entry.path(), &to).map_err(io("copy GRUB file to", &to))?;
        }
    }
    let image_path = target.join(platform.image_name());
    let _ = fs::remove_file(&image_path);
    fs::write(&image_path, image).map_err(io("write", &image_path))
}

/// The newest `vmlinuz-*` in `<root>/boot`, with its `initrd.img-*` if present.
pub fn find_kernel(root: &Path) -> Result<Kernel, DiskError> {
    let boot = root.join("boot");
    let entries = fs::read_dir(&boot).map_err(|source| DiskError::Io {
        action: "list",
        path: boot.clone(),
        source,
    })?;
    let mut versions: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    let version = versions.pop().ok_or(DiskError::NoKernel {
        boot_dir: boot.clone(),
    })?;
    let initrd = format!("initrd.img-{version}");
    Ok(Kernel {
        vmlinuz: format!("/boot/vmlinuz-{version}"),
        initrd: boot
            .join(&initrd)
            .is_file()
            .then(|| format!("/boot/{initrd}")),
        version,
    })
}

/// Orders version strings by their runs of digits numerically and the rest bytewise, so
/// that 6.10.0 sorts after 6.9.0.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let key = |s| {
        chunks(s)
            .into_iter()
            .map(|(digit, c)| {
                if digit {
                    (c.trim_start_matches('0').len(), c.trim_start_matches('0'))
                } else {
                    (0, c)
                }
            })
            .collect::<Vec<_>>()
    };
    key(a).cmp(&key(b))
}

/// The guest's `/boot/grub/grub.cfg`: one entry booting `kernel` from the filesystem with
/// `fs_uuid`, kernel messages on both the serial port and the screen (ttyS0 last, so it is
/// `/dev/console` and boot progress reaches the serial log QA reads), GRUB's menu on both.
/// `update-grub` inside the guest replaces it.
pub fn config(kernel: &Kernel, fs_uuid: &str) -> String {
    let initrd = kernel
        .initrd
        .as_ref()
        .map(|i| format!("\tinitrd {i}\n"))
        .unwrap_or_default();
    format!(
        "# Written by vmbuild. `update-grub` in the guest replaces this file.\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set default=0\n\
         set timeout=1\n\
         search --no-floppy --fs-uuid --set=root {fs_uuid}\n\
         menuentry 'Debian GNU/Linux, with Linux {version}' {{\n\
         \tlinux {vmlinuz} root=UUID={fs_uuid} ro net.ifnames=0 console=tty0 console=ttyS0,115200n8\n\
         {initrd}}}\n",
        version = kernel.version,
        vmlinuz = kernel.vmlinuz,
    )
}

/// Where [`DEFAULTS_DROPIN`] goes in the guest: Debian's grub-mkconfig reads
/// `/etc/default/grub.d/*.cfg` after `/etc/default/grub`.
pub const DEFAULTS_DROPIN_PATH: &str = "etc/default/grub.d/50-vmbuild-console.cfg";

/// Settings that make `update-grub` in the guest (after a kernel upgrade, or virt-v2v)
/// produce the same consoles as [`config`] does.
pub const DEFAULTS_DROPIN: &str = "\
# Written by vmbuild: keeps update-grub's grub.cfg on the serial port and the screen.
GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX net.ifnames=0 console=tty0 console=ttyS0,115200n8\"
GRUB_TERMINAL=\"serial console\"
GRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"
GRUB_TIMEOUT=1
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["6.9.0-1-amd64", "6.10.0-1-amd64", "6.1.0-50-cloud-amd64"];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            ["6.1.0-50-cloud-amd64", "6.9.0-1-amd64", "6.10.0-1-amd64"]
        );
    }

    #[test]
    fn the_blocklist_covers_the_rest_of_core() {
        let mut core = vec![0u8; 3 * 512 + 7];
        core[510] = 0x20;
        core[511] = 0x08;
        patch_core(&mut core, 1, 2047).unwrap();
        assert_eq!(core.len(), 4 * 512);
        assert_eq!(&core[500..508], &2u64.to_le_bytes());
        assert_eq!(&core[508..510], &3u16.to_le_bytes());
        assert!(matches!(
            patch_core(&mut core, 1, 3),
            Err(DiskError::CoreImageSize { .. })
        ));
    }

    #[test]
    fn config_boots_by_uuid() {
        let kernel = Kernel {
            version: "6.1.0-50-cloud-amd64".into(),
            vmlinuz: "/boot/vmlinuz-6.1.0-50-cloud-amd64".into(),
            initrd: Some("/boot/initrd.img-6.1.0-50-cloud-amd64".into()),
        };
        let cfg = config(&kernel, "0f0e0d0c-0b0a-4908-8706-050403020100");
        assert!(cfg.contains("--set=root 0f0e0d0c-0b0a-4908-8706-050403020100\n"));
        assert!(cfg.contains("root=UUID=0f0e0d0c-0b0a-4908-8706-050403020100 ro"));
        assert!(cfg.contains("\tinitrd /boot/initrd.img-6.1.0-50-cloud-amd64\n}\n"));
    }
}
