//! Packing an OVA: the raw disk converted to a streamOptimized VMDK (version 3, LSI Logic), an
//! OVF descriptor and a SHA-256 manifest, in a POSIX ustar archive whose members come in the
//! order importers require: `NAME.ovf`, `NAME.mf`, `NAME-disk1.vmdk`.
//!
//! The manifest (second member) holds the digest of the disk (third member), yet the disk is
//! read only once: every member's size is known before the disk is hashed (the manifest has a
//! fixed length), so the disk is copied to its final offset while being hashed, and the
//! descriptor and manifest are written in front of it afterwards. The archive is reproducible:
//! fixed owner, mode and modification time (0), and a VMDK without a random content id.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::convert::{convert, virtual_size, vmdk_header, ConvertOptions, VmdkAdapter};
use super::{io_err, ovf_descriptor, DiskFormat, ImageError, VmSpec, VmdkSubformat};

const BLOCK: u64 = 512;

/// What `build_ova` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaInfo {
    pub path: PathBuf,
    /// Member names, in archive order.
    pub ovf_name: String,
    pub manifest_name: String,
    pub disk_name: String,
    /// Size of the VMDK member in bytes.
    pub disk_size: u64,
    /// The disk's virtual size in bytes.
    pub capacity: u64,
    /// Size of the whole archive in bytes.
    pub ova_size: u64,
    /// Lowercase hex SHA-256 of the members, as in the manifest.
    pub ovf_sha256: String,
    pub disk_sha256: String,
    /// The manifest's text.
    pub manifest: String,
}

/// Build `out_ova` from the raw disk `raw`; `scratch` holds the intermediate VMDK (as large as
/// the compressed disk) and is left empty of it afterwards. On failure `out_ova` is removed.
pub fn build_ova(
    raw: &Path,
    spec: &VmSpec,
    out_ova: &Path,
    scratch: &Path,
) -> Result<OvaInfo, ImageError> {
    spec.validate()?;
    let disk_name = format!("{}-disk1.vmdk", spec.name);
    let vmdk = scratch.join(&disk_name);
    let result = build(raw, spec, out_ova, &vmdk, disk_name);
    let _ = std::fs::remove_file(&vmdk);
    if result.is_err() {
        let _ = std::fs::remove_file(out_ova);
    }
    result
}

fn build(
    raw: &Path,
    spec: &VmSpec,
    out_ova: &Path,
    vmdk: &Path,
    disk_name: String,
) -> Result<OvaInfo, ImageError> {
    // The VMDK keeps its final name: its descriptor's extent line names the file.
    let options = ConvertOptions {
        compress: false,
        vmdk_subformat: VmdkSubformat::StreamOptimized,
        vmdk_adapter: VmdkAdapter::LsiLogic,
    };
    convert(raw, DiskFormat::Vmdk, &options, vmdk)?;
    let header = vmdk_header(vmdk)?;
    if header.version != 3 || header.create_type() != Some("streamOptimized") {
        return Err(ImageError::BadImage {
            path: vmdk.to_path_buf(),
            detail: format!(
                "qemu-img wrote a version {} `{}` VMDK; VMware imports only version 3 \
                 streamOptimized disks",
                header.version,
                header.create_type().unwrap_or("?")
            ),
        });
    }
    let capacity = virtual_size(vmdk)?;
    let disk_size = std::fs::metadata(vmdk)
        .map_err(io_err("read the size of", vmdk))?
        .len();

    let ovf_name = format!("{}.ovf", spec.name);
    let manifest_name = format!("{}.mf", spec.name);
    let ovf = ovf_descriptor(spec, &disk_name, disk_size, capacity);
    let ovf_sha256 = hex::encode(Sha256::digest(ovf.as_bytes()));
    let manifest_for = |disk_digest: &str| {
        format!("SHA256({ovf_name})= {ovf_sha256}\nSHA256({disk_name})= {disk_digest}\n")
    };
    let manifest_len = manifest_for(&"0".repeat(64)).len() as u64;

    let ovf_at = 0;
    let manifest_at = ovf_at + BLOCK + padded(ovf.len() as u64);
    let disk_at = manifest_at + BLOCK + padded(manifest_len);
    let end = disk_at + BLOCK + padded(disk_size);

    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out_ova)
        .map_err(io_err("create", out_ova))?;
    // The disk first, hashed on the way; then what precedes it.
    out.seek(SeekFrom::Start(disk_at + BLOCK))
        .map_err(io_err("seek in", out_ova))?;
    let disk_sha256 = copy_hashing(vmdk, disk_size, &mut out, out_ova)?;
    let trailer = (padded(disk_size) - disk_size) + 2 * BLOCK;
    out.write_all(&vec![0u8; trailer as usize])
        .map_err(io_err("write", out_ova))?;

    let manifest = manifest_for(&disk_sha256);
    debug_assert_eq!(manifest.len() as u64, manifest_len);
    let mut front = Vec::with_capacity(disk_at as usize + BLOCK as usize);
    push_member(&mut front, &ovf_name, ovf.as_bytes())?;
    push_member(&mut front, &manifest_name, manifest.as_bytes())?;
    front.extend_from_slice(&ustar_header(&disk_name, disk_size)?);
    debug_assert_eq!(front.len() as u64, disk_at + BLOCK);
    out.seek(SeekFrom::Start(0))
        .and_then(|_| out.write_all(&front))
        .and_then(|_| out.flush())
        .map_err(io_err("write", out_ova))?;
    let ova_size = out.metadata().map_err(io_err("stat", out_ova))?.len();
    debug_assert_eq!(ova_size, end + 2 * BLOCK);

    Ok(OvaInfo {
        path: out_ova.to_path_buf(),
        ovf_name,
        manifest_name,
        disk_name,
        disk_size,
        capacity,
        ova_size,
        ovf_sha256,
        disk_sha256,
        manifest,
    })
}

/// `len` rounded up to whole tar blocks.
fn padded(len: u64) -> u64 {
    len.div_ceil(BLOCK) * BLOCK
}

/// A ustar header for a regular file, owned by root, mode 0644, modified at time 0.
fn ustar_header(name: &str, size: u64) -> Result<[u8; 512], ImageError> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header
        .set_path(name)
        .map_err(io_err("name an archive member", Path::new(name)))?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
        .set_username("root")
        .and_then(|_| header.set_groupname("root"))
        .map_err(io_err("name an archive member", Path::new(name)))?;
    header.set_cksum();
    Ok(*header.as_bytes())
}

fn push_member(out: &mut Vec<u8>, name: &str, data: &[u8]) -> Result<(), ImageError> {
    out.extend_from_slice(&ustar_header(name, data.len() as u64)?);
    out.extend_from_slice(data);
    out.resize(
        out.len() + (padded(data.len() as u64) - data.len() as u64) as usize,
        0,
    );
    Ok(())
}

/// Copy exactly `size` bytes of `from` to `out`, returning their SHA-256 in lowercase hex.
fn copy_hashing(
    from: &Path,
    size: u64,
    out: &mut File,
    out_path: &Path,
) -> Result<String, ImageError> {
    let mut input = File::open(from).map_err(io_err("open", from))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 4 << 20];
    let mut copied = 0u64;
    loop {
        let n = input.read(&mut buffer).map_err(io_err("read", from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n])
            .map_err(io_err("write", out_path))?;
        copied += n as u64;
    }
    if copied != size {
        return Err(ImageError::BadImage {
            path: from.to_path_buf(),
            detail: format!("changed size while being archived ({size} then {copied} bytes)"),
        });
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::super::ovf::tests::check_descriptor;
    use super::super::testutil::{make_raw, raw_digest_of, sha256_file, spec, RAW_SIZE};
    use super::*;

    /// A member of a tar archive, parsed by hand (not with the crate that wrote it).
    struct Member {
        name: String,
        data: std::ops::Range<usize>,
    }

    fn octal(field: &[u8]) -> u64 {
        let text = std::str::from_utf8(field).unwrap();
        u64::from_str_radix(text.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap()
    }

    fn members(archive: &[u8]) -> Vec<Member> {
        let mut out = vec![];
        let mut at = 0usize;
        loop {
            let header = &archive[at..at + 512];
            if header.iter().all(|&b| b == 0) {
                // End of archive: two zero blocks, then nothing.
                assert!(archive[at..].iter().all(|&b| b == 0));
                assert_eq!(archive.len() - at, 1024);
                break;
            }
            assert_eq!(&header[257..263], b"ustar\0", "ustar magic");
            assert_eq!(&header[263..265], b"00", "ustar version");
            assert_eq!(header[156], b'0', "regular file");
            let stored = octal(&header[148..156]);
            let sum: u64 = header
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        b as u64
                    }
                })
                .sum();
            assert_eq!(stored, sum, "header checksum");
            assert!(header[345..500].iter().all(|&b| b == 0), "no ustar prefix");
            let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
            let name = String::from_utf8(header[..name_end].to_vec()).unwrap();
            assert!(!name.contains('/'), "{name} has a directory");
            let size = octal(&header[124..136]) as usize;
            out.push(Member {
                name,
                data: at + 512..at + 512 + size,
            });
            at += 512 + size.div_ceil(512) * 512;
        }
        out
    }

    #[test]
    fn ova_passes_the_importers_checks() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let spec = spec("ToxoDB-68");
        let ova = dir.path().join("ToxoDB-68.ova");
        let info = build_ova(&raw, &spec, &ova, &scratch).unwrap();
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);

        let archive = std::fs::read(&ova).unwrap();
        assert_eq!(archive.len() as u64, info.ova_size);
        let members = members(&archive);
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["ToxoDB-68.ovf", "ToxoDB-68.mf", "ToxoDB-68-disk1.vmdk"]
        );
        let bytes = |i: usize| &archive[members[i].data.clone()];
        let sha = |data: &[u8]| hex::encode(Sha256::digest(data));

        // Manifest: exactly the `SHA256(NAME)= hex` lines, matching the members.
        let manifest = std::str::from_utf8(bytes(1)).unwrap();
        assert_eq!(
            manifest,
            format!(
                "SHA256(ToxoDB-68.ovf)= {}\nSHA256(ToxoDB-68-disk1.vmdk)= {}\n",
                sha(bytes(0)),
                sha(bytes(2))
            )
        );
        assert_eq!(info.disk_sha256, sha(bytes(2)));
        assert_eq!(info.ovf_sha256, sha(bytes(0)));

        // Descriptor: sizes are the real ones.
        let ovf = std::str::from_utf8(bytes(0)).unwrap();
        let (size, capacity) = check_descriptor(ovf, &spec, "ToxoDB-68-disk1.vmdk");
        assert_eq!(size, bytes(2).len() as u64);
        assert_eq!(capacity, RAW_SIZE);

        // The disk: a version 3 streamOptimized VMDK that qemu-img checks and that converts
        // back to the very bytes of the raw disk.
        let vmdk = dir.path().join("extracted.vmdk");
        std::fs::write(&vmdk, bytes(2)).unwrap();
        assert_eq!(&bytes(2)[0..4], b"KDMV");
        assert_eq!(u32::from_le_bytes(bytes(2)[4..8].try_into().unwrap()), 3);
        let header = vmdk_header(&vmdk).unwrap();
        assert!(header.descriptor.contains("\"ToxoDB-68-disk1.vmdk\""));
        assert!(header.descriptor.contains("ddb.adapterType = \"lsilogic\""));
        super::super::check_image(&vmdk).unwrap();
        assert_eq!(raw_digest_of(&vmdk, dir.path()), sha256_file(&raw));

        // GNU tar agrees on the listing and on the format.
        let listing = std::process::Command::new("tar")
            .arg("tvf")
            .arg(&ova)
            .output()
            .unwrap();
        assert!(listing.status.success());
        let listing = String::from_utf8(listing.stdout).unwrap();
        let order: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(order, names);

        // Reproducible: the same disk gives the same archive.
        let again = dir.path().join("again.ova");
        build_ova(&raw, &spec, &again, &scratch).unwrap();
        assert_eq!(sha256_file(&again), sha256_file(&ova));
    }

    #[test]
    fn bad_names_fail_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path());
        let ova = dir.path().join("x.ova");
        let err = build_ova(&raw, &spec("../escape"), &ova, dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::BadName { .. }), "{err}");
        assert!(!ova.exists());
    }

    #[test]
    fn a_missing_raw_disk_leaves_no_archive() {
        let dir = tempfile::tempdir().unwrap();
        let ova = dir.path().join("x.ova");
        let err =
            build_ova(&dir.path().join("nope.raw"), &spec("x"), &ova, dir.path()).unwrap_err();
        assert!(matches!(err, ImageError::Io { .. }), "{err}");
        assert!(!ova.exists());
    }

    /// Times `build_ova` against `qemu-img convert` + `tar` on a real disk:
    /// `VMBUILD_BENCH_RAW=/path/disk.raw cargo test --release -p vmbuild-engine bench_ova -- --ignored --nocapture`
    /// (`VMBUILD_BENCH_DIR` for the work folder, `VMBUILD_BENCH_KEEP=1` to keep the outputs).
    #[test]
    #[ignore]
    fn bench_ova() {
        let Some(raw) = std::env::var_os("VMBUILD_BENCH_RAW") else {
            eprintln!("set VMBUILD_BENCH_RAW to a raw disk");
            return;
        };
        let raw = PathBuf::from(raw);
        let dir = tempfile::tempdir_in(std::env::var_os("VMBUILD_BENCH_DIR").unwrap_or(".".into()))
            .unwrap();
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let spec = VmSpec {
            name: "bench".into(),
            cpus: 2,
            memory_mib: 1024,
            os: super::super::GuestOs::Debian12,
            description: None,
        };
        let start = std::time::Instant::now();
        let info = build_ova(&raw, &spec, &dir.path().join("bench.ova"), &scratch).unwrap();
        let ours = start.elapsed();
        eprintln!(
            "build_ova: {:.2} s, ova {} bytes, vmdk {} bytes",
            ours.as_secs_f64(),
            info.ova_size,
            info.disk_size
        );

        let base = dir.path().join("baseline");
        std::fs::create_dir(&base).unwrap();
        let start = std::time::Instant::now();
        let vmdk_start = std::time::Instant::now();
        let status = std::process::Command::new("qemu-img")
            .args(["convert", "-O", "vmdk", "-o", "subformat=streamOptimized"])
            .arg(&raw)
            .arg(base.join("bench-disk1.vmdk"))
            .status()
            .unwrap();
        assert!(status.success());
        let vmdk_time = vmdk_start.elapsed();
        std::fs::write(
            base.join("bench.ovf"),
            ovf_descriptor(&spec, "bench-disk1.vmdk", 0, 0),
        )
        .unwrap();
        let status = std::process::Command::new("tar")
            .current_dir(&base)
            .args([
                "--format=ustar",
                "-cf",
                "../baseline.ova",
                "bench.ovf",
                "bench-disk1.vmdk",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let baseline = start.elapsed();
        let size = std::fs::metadata(dir.path().join("baseline.ova"))
            .unwrap()
            .len();
        eprintln!(
            "baseline qemu-img convert {:.2} s + tar = {:.2} s, ova {} bytes",
            vmdk_time.as_secs_f64(),
            baseline.as_secs_f64(),
            size
        );
        if std::env::var_os("VMBUILD_BENCH_KEEP").is_some() {
            eprintln!("kept {}", dir.keep().display());
        }
    }
}
