//! Converting the raw disk to the formats users run (qcow2, VMDK, VDI, sparse raw) with
//! `qemu-img`, reading an image's virtual size, checking an image, and reading a VMDK's sparse
//! extent header. VMDK outputs are made reproducible: qemu-img writes a random content id
//! (`CID=`) into the descriptor, which is replaced by one derived from the descriptor itself.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{io_err, run_tool, ImageError};
use crate::steps::tools::{CP, QEMU_IMG};

/// An output disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// QEMU/KVM, libvirt.
    Qcow2,
    /// VMware (and VirtualBox).
    Vmdk,
    /// VirtualBox. Not reproducible: qemu-img gives every VDI fresh UUIDs, which VirtualBox
    /// needs to tell disks apart.
    Vdi,
    /// A sparse copy of the raw disk.
    Raw,
}

impl DiskFormat {
    /// The file extension (and qemu-img's name for the format).
    pub fn extension(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vdi => "vdi",
            DiskFormat::Raw => "raw",
        }
    }
}

/// How a VMDK is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmdkSubformat {
    /// Compressed grains, written in one pass; what OVAs carry. Read-only for VMware until
    /// imported.
    #[default]
    StreamOptimized,
    /// A growable sparse disk in a single file, usable in place by VMware and VirtualBox.
    MonolithicSparse,
}

impl VmdkSubformat {
    fn qemu_name(self) -> &'static str {
        match self {
            VmdkSubformat::StreamOptimized => "streamOptimized",
            VmdkSubformat::MonolithicSparse => "monolithicSparse",
        }
    }
}

/// The disk controller a VMDK's descriptor names (`ddb.adapterType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmdkAdapter {
    /// qemu-img's default.
    #[default]
    Ide,
    /// LSI Logic parallel SCSI, the controller of the OVA descriptor.
    LsiLogic,
}

impl VmdkAdapter {
    fn qemu_name(self) -> &'static str {
        match self {
            VmdkAdapter::Ide => "ide",
            VmdkAdapter::LsiLogic => "lsilogic",
        }
    }
}

/// Format-specific choices; the default is an uncompressed qcow2 and a streamOptimized VMDK for
/// an IDE controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConvertOptions {
    /// Compress qcow2 clusters (zlib, which every qemu reads). Ignored for other formats.
    pub compress: bool,
    pub vmdk_subformat: VmdkSubformat,
    pub vmdk_adapter: VmdkAdapter,
}

/// Convert the raw disk `raw` to `format` at `out` (overwritten). On failure `out` is removed.
pub fn convert(
    raw: &Path,
    format: DiskFormat,
    options: &ConvertOptions,
    out: &Path,
) -> Result<(), ImageError> {
    std::fs::metadata(raw).map_err(io_err("read", raw))?;
    let result = convert_inner(raw, format, options, out);
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

fn convert_inner(
    raw: &Path,
    format: DiskFormat,
    options: &ConvertOptions,
    out: &Path,
) -> Result<(), ImageError> {
    if format == DiskFormat::Raw {
        run_tool(
            CP,
            &[
                OsStr::new("--sparse=always"),
                OsStr::new("--"),
                raw.as_os_str(),
                out.as_os_str(),
            ],
        )?;
        return Ok(());
    }
    let mut args: Vec<&OsStr> = ["convert", "-f", "raw", "-O", format.extension()]
        .into_iter()
        .map(OsStr::new)
        .collect();
    let vmdk_options;
    match format {
        DiskFormat::Qcow2 if options.compress => args.push(OsStr::new("-c")),
        DiskFormat::Vmdk => {
            vmdk_options = format!(
                "subformat={},adapter_type={}",
                options.vmdk_subformat.qemu_name(),
                options.vmdk_adapter.qemu_name()
            );
            args.push(OsStr::new("-o"));
            args.push(OsStr::new(&vmdk_options));
        }
        _ => {}
    }
    args.extend([raw.as_os_str(), out.as_os_str()]);
    run_tool(QEMU_IMG, &args)?;
    if format == DiskFormat::Vmdk {
        fix_vmdk_cid(out)?;
    }
    Ok(())
}

/// The virtual size in bytes of an image of any format qemu-img reads.
pub fn virtual_size(image: &Path) -> Result<u64, ImageError> {
    let output = run_tool(
        QEMU_IMG,
        &[
            OsStr::new("info"),
            OsStr::new("--output=json"),
            OsStr::new("-U"),
            image.as_os_str(),
        ],
    )?;
    let bad = |detail: String| ImageError::Output {
        command: format!("qemu-img info --output=json -U {}", image.display()),
        detail,
    };
    let info: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| bad(e.to_string()))?;
    info.get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| bad("no `virtual-size` number".into()))
}

/// Check an image's internal consistency (`qemu-img check`); formats without metadata (raw)
/// pass trivially.
pub fn check_image(image: &Path) -> Result<(), ImageError> {
    if is_raw(image)? {
        return Ok(());
    }
    run_tool(QEMU_IMG, &[OsStr::new("check"), image.as_os_str()])?;
    Ok(())
}

fn is_raw(image: &Path) -> Result<bool, ImageError> {
    let output = run_tool(
        QEMU_IMG,
        &[
            OsStr::new("info"),
            OsStr::new("--output=json"),
            OsStr::new("-U"),
            image.as_os_str(),
        ],
    )?;
    let info: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| ImageError::Output {
            command: format!("qemu-img info --output=json -U {}", image.display()),
            detail: e.to_string(),
        })?;
    Ok(info.get("format").and_then(serde_json::Value::as_str) == Some("raw"))
}

/// The fields of a VMDK sparse extent header that importers look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkHeader {
    /// 1, 2 or 3; VMware's importers want 3 for streamOptimized disks.
    pub version: u32,
    pub flags: u32,
    /// Virtual size in 512-byte sectors.
    pub capacity_sectors: u64,
    pub grain_sectors: u64,
    /// 1 = deflate.
    pub compress_algorithm: u16,
    /// The embedded text descriptor.
    pub descriptor: String,
    /// Where the descriptor starts in the file, in bytes.
    descriptor_offset: u64,
    /// The bytes reserved for the descriptor in the file.
    descriptor_capacity: usize,
}

impl VmdkHeader {
    /// The descriptor's `createType` (`streamOptimized`, `monolithicSparse`...).
    pub fn create_type(&self) -> Option<&str> {
        self.descriptor.lines().find_map(|line| {
            line.trim()
                .strip_prefix("createType=")
                .map(|v| v.trim_matches('"'))
        })
    }
}

/// Read the sparse extent header (magic `KDMV`) and embedded descriptor of a VMDK.
pub fn vmdk_header(path: &Path) -> Result<VmdkHeader, ImageError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut header = [0u8; 512];
    file.read_exact(&mut header)
        .map_err(io_err("read the header of", path))?;
    let bad = |detail: String| ImageError::BadImage {
        path: path.to_path_buf(),
        detail,
    };
    if &header[0..4] != b"KDMV" {
        return Err(bad("no VMDK sparse extent magic `KDMV`".into()));
    }
    let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().unwrap_or_default());
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap_or_default());
    let descriptor_sectors = u64_at(36);
    let descriptor_offset = u64_at(28) * 512;
    if descriptor_sectors == 0 || descriptor_sectors > 2048 {
        return Err(bad(format!(
            "no embedded descriptor (size {descriptor_sectors} sectors)"
        )));
    }
    let mut descriptor = vec![0u8; (descriptor_sectors * 512) as usize];
    file.seek(SeekFrom::Start(descriptor_offset))
        .and_then(|_| file.read_exact(&mut descriptor))
        .map_err(io_err("read the descriptor of", path))?;
    let end = descriptor
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(descriptor.len());
    Ok(VmdkHeader {
        version: u32_at(4),
        flags: u32_at(8),
        capacity_sectors: u64_at(12),
        grain_sectors: u64_at(20),
        compress_algorithm: u16::from_le_bytes([header[77], header[78]]),
        descriptor: String::from_utf8_lossy(&descriptor[..end]).into_owned(),
        descriptor_offset,
        descriptor_capacity: descriptor.len(),
    })
}

/// The descriptor with its random `CID=` replaced by a digest of the rest of the descriptor.
/// qemu-img prints the CID without leading zeros (`CID=1ad5b6c`), so the value is 1 to 8 hex
/// digits; the result always has 8. `None` when there is no such line.
fn with_stable_cid(descriptor: &str) -> Option<String> {
    let at = descriptor
        .match_indices("CID=")
        .map(|(i, _)| i)
        .find(|&i| i == 0 || descriptor.as_bytes()[i - 1] == b'\n')?;
    let value_at = at + 4;
    let value_len = descriptor[value_at..]
        .find('\n')
        .unwrap_or(descriptor.len() - value_at);
    let old = &descriptor[value_at..value_at + value_len];
    if old.is_empty() || old.len() > 8 || !old.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let with = |value: &str| {
        let mut text = descriptor.to_string();
        text.replace_range(value_at..value_at + value_len, value);
        text
    };
    let digest = blake3::hash(with("00000000").as_bytes());
    let mut cid = u32::from_le_bytes(digest.as_bytes()[..4].try_into().unwrap_or_default());
    if cid == u32::MAX {
        cid = 1;
    }
    Some(with(&format!("{cid:08x}")))
}

/// Replace the random `CID=` of a VMDK's descriptor in place (see [`with_stable_cid`]), so that
/// converting the same disk twice gives the same bytes.
fn fix_vmdk_cid(path: &Path) -> Result<(), ImageError> {
    let header = vmdk_header(path)?;
    let Some(descriptor) = with_stable_cid(&header.descriptor) else {
        return Ok(());
    };
    // The descriptor may grow by the leading zeros qemu-img left out; it stays NUL-padded
    // within its reserved sectors.
    if descriptor.len() > header.descriptor_capacity {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    file.seek(SeekFrom::Start(header.descriptor_offset))
        .and_then(|_| file.write_all(descriptor.as_bytes()))
        .map_err(io_err("write the descriptor of", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{make_raw, raw_digest_of, sha256_file, RAW_SIZE};
    use super::*;

    #[test]
    fn the_stable_cid_ignores_the_random_one_whatever_its_length() {
        let descriptor = |cid: &str| {
            format!("# Disk DescriptorFile\nversion=1\nCID={cid}\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n")
        };
        let eight = with_stable_cid(&descriptor("06a2004b")).unwrap();
        let seven = with_stable_cid(&descriptor("1ad5b6c")).unwrap();
        assert_eq!(eight, seven);
        assert_eq!(eight.len(), descriptor("06a2004b").len());
        assert!(!eight.contains("CID=06a2004b"));
        assert_eq!(with_stable_cid("version=1\n"), None);
        // The parent's CID is not the disk's.
        assert!(with_stable_cid(&descriptor("1ad5b6c"))
            .unwrap()
            .contains("parentCID=ffffffff"));
    }

    fn convert_to(
        raw: &Path,
        dir: &Path,
        format: DiskFormat,
        options: ConvertOptions,
    ) -> std::path::PathBuf {
        let out = dir.join(format!(
            "out-{:?}-{}-{:?}.{}",
            options.vmdk_subformat,
            options.compress,
            options.vmdk_adapter,
            format.extension()
        ));
        convert(raw, format, &options, &out).unwrap();
        out
    }

    #[test]
    fn every_format_round_trips_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        let original = sha256_file(&raw);
        let mut cases = vec![];
        for format in [DiskFormat::Qcow2, DiskFormat::Vdi, DiskFormat::Raw] {
            cases.push((format, ConvertOptions::default()));
        }
        cases.push((
            DiskFormat::Qcow2,
            ConvertOptions {
                compress: true,
                ..Default::default()
            },
        ));
        for subformat in [
            VmdkSubformat::StreamOptimized,
            VmdkSubformat::MonolithicSparse,
        ] {
            cases.push((
                DiskFormat::Vmdk,
                ConvertOptions {
                    vmdk_subformat: subformat,
                    vmdk_adapter: VmdkAdapter::LsiLogic,
                    ..Default::default()
                },
            ));
        }
        for (format, options) in cases {
            let out = convert_to(&raw, dir.path(), format, options);
            assert_eq!(virtual_size(&out).unwrap(), RAW_SIZE, "{format:?}");
            check_image(&out).unwrap();
            assert_eq!(
                raw_digest_of(&out, dir.path()),
                original,
                "{format:?} {options:?} does not round-trip"
            );
        }
    }

    #[test]
    fn raw_copies_stay_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        let out = convert_to(&raw, dir.path(), DiskFormat::Raw, ConvertOptions::default());
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.len(), RAW_SIZE);
        assert!(meta.blocks() * 512 < 16 << 20, "{} blocks", meta.blocks());
    }

    #[test]
    fn compressed_qcow2_is_smaller() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        let plain = convert_to(
            &raw,
            dir.path(),
            DiskFormat::Qcow2,
            ConvertOptions::default(),
        );
        let compressed = convert_to(
            &raw,
            dir.path(),
            DiskFormat::Qcow2,
            ConvertOptions {
                compress: true,
                ..Default::default()
            },
        );
        let plain = std::fs::metadata(plain).unwrap().len();
        let compressed = std::fs::metadata(compressed).unwrap().len();
        // 4 MiB of text compress to almost nothing; 3 MiB of random bytes don't.
        assert!(compressed + (3 << 20) < plain, "{compressed} vs {plain}");
    }

    #[test]
    fn stream_optimized_vmdk_is_version_3_compressed_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        let options = ConvertOptions {
            vmdk_adapter: VmdkAdapter::LsiLogic,
            ..Default::default()
        };
        let a = dir.path().join("a.vmdk");
        convert(&raw, DiskFormat::Vmdk, &options, &a).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(&bytes[0..4], b"KDMV");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
        let header = vmdk_header(&a).unwrap();
        assert_eq!(header.version, 3);
        assert_eq!(header.compress_algorithm, 1);
        assert_eq!(header.capacity_sectors * 512, RAW_SIZE);
        assert_eq!(header.create_type(), Some("streamOptimized"));
        assert!(header.descriptor.contains("ddb.adapterType = \"lsilogic\""));
        // Same input, same name: same bytes (the CID is no longer random).
        let first = sha256_file(&a);
        convert(&raw, DiskFormat::Vmdk, &options, &a).unwrap();
        assert_eq!(sha256_file(&a), first);
        let cid = header
            .descriptor
            .lines()
            .find_map(|l| l.strip_prefix("CID="))
            .unwrap();
        assert_eq!(cid.len(), 8);
        assert_ne!(cid, "ffffffff");
    }

    #[test]
    fn monolithic_sparse_vmdk_is_not_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        let options = ConvertOptions {
            vmdk_subformat: VmdkSubformat::MonolithicSparse,
            ..Default::default()
        };
        let out = convert_to(&raw, dir.path(), DiskFormat::Vmdk, options);
        let header = vmdk_header(&out).unwrap();
        assert_eq!(header.create_type(), Some("monolithicSparse"));
        assert_eq!(header.compress_algorithm, 0);
    }

    #[test]
    fn failures_carry_the_command_and_stderr_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.raw");
        let out = dir.path().join("out.qcow2");
        let err = convert(
            &missing,
            DiskFormat::Qcow2,
            &ConvertOptions::default(),
            &out,
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::Io { .. }), "{err}");
        // A directory is not an image: qemu-img itself fails.
        let err = virtual_size(dir.path()).unwrap_err();
        match err {
            ImageError::Command {
                command, stderr, ..
            } => {
                assert!(command.starts_with("qemu-img info"), "{command}");
                assert!(!stderr.is_empty());
            }
            other => panic!("{other}"),
        }
        let not_vmdk = make_raw(dir.path());
        assert!(matches!(
            vmdk_header(&not_vmdk),
            Err(ImageError::BadImage { .. })
        ));
        assert!(!out.exists());
    }
}
