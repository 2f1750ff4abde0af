//! Disk image formats users download: converting the bootable raw disk with `qemu-img`
//! (`convert`), packing an OVA for VMware and VirtualBox (`ova`, `ovf`), and describing or
//! defining a libvirt domain (`libvirt`). Owns the error type and the virtual machine's
//! description (`VmSpec`) those share; the step wrappers live elsewhere.
//!
//! Everything here is synchronous (it runs external programs and copies large files); call it
//! from `tokio::task::spawn_blocking`.

pub mod convert;
pub mod libvirt;
pub mod ova;
pub mod ovf;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::tools::Tool;

pub use convert::{
    check_image, convert, virtual_size, vmdk_header, ConvertOptions, DiskFormat, VmdkAdapter,
    VmdkHeader, VmdkSubformat,
};
pub use libvirt::{define_libvirt_domain, libvirt_domain_xml, DomainType};
pub use ova::{build_ova, OvaInfo};
pub use ovf::ovf_descriptor;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("`{program}` is not installed: install the Debian package `{package}` (apt-get install {package})")]
    MissingTool {
        program: &'static str,
        package: &'static str,
    },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}: {stderr}")]
    Command {
        command: String,
        status: String,
        /// The end of what the program printed on stderr.
        stderr: String,
    },
    #[error("unexpected output from `{command}`: {detail}")]
    Output { command: String, detail: String },
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a usable image: {detail}")]
    BadImage { path: PathBuf, detail: String },
    #[error("invalid virtual machine name `{name}`: {detail}")]
    BadName { name: String, detail: &'static str },
    #[error("libvirt could not {action}: {message}")]
    Libvirt { action: String, message: String },
    #[error("this vmbuild was built without the `libvirt` feature")]
    LibvirtUnavailable,
}

/// A `map_err` adapter: an I/O error while doing `action` on `path`.
pub(crate) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

/// The guest operating system, as OVF, VMware and libosinfo name it. All are x86_64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestOs {
    /// Debian 12 (bookworm), 64-bit.
    Debian12,
    /// Any other 64-bit Linux.
    OtherLinux,
}

impl GuestOs {
    /// The CIM operating system id of the OVF `OperatingSystemSection` (96 = Debian 64-bit).
    pub fn ovf_id(self) -> u32 {
        match self {
            GuestOs::Debian12 => 96,
            GuestOs::OtherLinux => 101,
        }
    }

    /// VMware's guest id (`vmw:osType`). `debian11_64Guest` is the newest Debian id that
    /// vSphere 7 knows; VMware products that don't know an id fall back to "other".
    pub fn vmware_os_type(self) -> &'static str {
        match self {
            GuestOs::Debian12 => "debian11_64Guest",
            GuestOs::OtherLinux => "otherLinux64Guest",
        }
    }

    /// A human description.
    pub fn description(self) -> &'static str {
        match self {
            GuestOs::Debian12 => "Debian GNU/Linux 12 (64-bit)",
            GuestOs::OtherLinux => "Linux (64-bit)",
        }
    }

    /// The libosinfo id, for libvirt's metadata (virt-manager shows it).
    pub fn libosinfo_id(self) -> &'static str {
        match self {
            GuestOs::Debian12 => "http://debian.org/debian/12",
            GuestOs::OtherLinux => "http://libosinfo.org/linux/2022",
        }
    }
}

/// What the virtual machine is, for the OVF descriptor and the libvirt domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The appliance's name: names the OVA members (`NAME.ovf`, `NAME-disk1.vmdk`) and the
    /// libvirt domain. Letters, digits, `.`, `_`, `-` and `+`; not starting with `.` or `-`.
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub os: GuestOs,
    pub description: Option<String>,
}

impl VmSpec {
    /// Check the name is usable as a file name inside an archive and as a domain name.
    pub fn validate(&self) -> Result<(), ImageError> {
        let bad = |detail| ImageError::BadName {
            name: self.name.clone(),
            detail,
        };
        if self.name.is_empty() {
            return Err(bad("it is empty"));
        }
        // `NAME-disk1.vmdk` must fit the 100 bytes of a ustar name field.
        if self.name.len() > 80 {
            return Err(bad("it is longer than 80 characters"));
        }
        if self.name.starts_with(['.', '-']) {
            return Err(bad("it starts with `.` or `-`"));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
        {
            return Err(bad(
                "only ASCII letters, digits, `.`, `_`, `-` and `+` are allowed",
            ));
        }
        if self.cpus == 0 || self.memory_mib == 0 {
            return Err(bad("it needs at least one CPU and some memory"));
        }
        Ok(())
    }
}

/// Run a tool to completion, capturing its output; a non-zero exit is an error carrying the
/// command line and the end of stderr.
pub(crate) fn run_tool(tool: Tool, args: &[&std::ffi::OsStr]) -> Result<Output, ImageError> {
    let command_line = std::iter::once(tool.program.to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(tool.program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ImageError::MissingTool {
                    program: tool.program,
                    package: tool.package,
                }
            } else {
                ImageError::Spawn {
                    command: command_line.clone(),
                    source,
                }
            }
        })?;
    if !output.status.success() {
        return Err(ImageError::Command {
            command: command_line,
            status: output.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&output.stderr), 20, 2000),
        });
    }
    Ok(output)
}

/// The last `lines` lines of `text`, at most `max` bytes, trimmed.
fn tail(text: &str, lines: usize, max: usize) -> String {
    let text = text.trim_end();
    let start = text
        .rmatch_indices('\n')
        .nth(lines.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    let mut out = &text[start..];
    if out.len() > max {
        let mut cut = out.len() - max;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = &out[cut..];
    }
    out.trim().to_string()
}

/// Escape text for XML content and attribute values.
pub(crate) fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 forbids are dropped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A small raw disk with recognisable content, and helpers the tests share.

    use std::io::{Seek, SeekFrom, Write};
    use std::path::{Path, PathBuf};

    use sha2::{Digest, Sha256};

    pub const RAW_SIZE: u64 = 64 << 20;

    /// A 64 MiB sparse raw disk: 3 MiB of random bytes at 5 MiB, 4 MiB of repeated text at
    /// 40 MiB (compressible), a few bytes in the last sector.
    pub fn make_raw(dir: &Path) -> PathBuf {
        let path = dir.join("disk.raw");
        let mut file = std::fs::File::create(&path).unwrap();
        file.set_len(RAW_SIZE).unwrap();
        let mut random = vec![0u8; 3 << 20];
        rand::fill(&mut random[..]);
        file.seek(SeekFrom::Start(5 << 20)).unwrap();
        file.write_all(&random).unwrap();
        let text: Vec<u8> = b"vmbuild test disk, compressible line\n"
            .iter()
            .copied()
            .cycle()
            .take(4 << 20)
            .collect();
        file.seek(SeekFrom::Start(40 << 20)).unwrap();
        file.write_all(&text).unwrap();
        file.seek(SeekFrom::Start(RAW_SIZE - 512)).unwrap();
        file.write_all(b"last sector").unwrap();
        path
    }

    pub fn sha256_file(path: &Path) -> String {
        let mut file = std::fs::File::open(path).unwrap();
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).unwrap();
        hex::encode(hasher.finalize())
    }

    /// Convert any image back to raw with qemu-img and hash it.
    pub fn raw_digest_of(image: &Path, scratch: &Path) -> String {
        let back = scratch.join(format!(
            "{}.back.raw",
            image.file_name().unwrap().to_string_lossy()
        ));
        let status = std::process::Command::new("qemu-img")
            .arg("convert")
            .arg("-O")
            .arg("raw")
            .arg(image)
            .arg(&back)
            .status()
            .unwrap();
        assert!(status.success());
        let digest = sha256_file(&back);
        std::fs::remove_file(&back).unwrap();
        digest
    }

    pub fn spec(name: &str) -> super::VmSpec {
        super::VmSpec {
            name: name.into(),
            cpus: 2,
            memory_mib: 2048,
            os: super::GuestOs::Debian12,
            description: Some("Test appliance <with> \"markup\" & more".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        let mut spec = testutil::spec("ToxoDB-68");
        assert!(spec.validate().is_ok());
        for bad in ["", "a/b", ".hidden", "-x", "with space", &"x".repeat(81)] {
            spec.name = bad.into();
            assert!(spec.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        let text = (1..=30).map(|i| format!("line {i}\n")).collect::<String>();
        let t = tail(&text, 3, 1000);
        assert_eq!(t, "line 28\nline 29\nline 30");
        assert_eq!(tail("short", 3, 1000), "short");
        assert_eq!(tail("abcdef", 3, 2), "ef");
    }

    #[test]
    fn a_missing_tool_names_its_package() {
        let tool = Tool {
            program: "vmbuild-no-such-program",
            package: "some-package",
        };
        let err = run_tool(tool, &[]).unwrap_err();
        assert!(matches!(err, ImageError::MissingTool { .. }));
        assert!(err.to_string().contains("apt-get install some-package"));
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml_escape("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
