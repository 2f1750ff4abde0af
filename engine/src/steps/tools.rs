//! External programs a step kind runs: found on `PATH` at plan time, versioned for the key, and
//! when missing, named with the Debian package that provides them.

use std::path::PathBuf;
use std::process::Command;

use crate::diag::{Diagnostic, Span};

/// A program and the Debian package it comes from.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const DEBOOTSTRAP: Tool = Tool {
    program: "debootstrap",
    package: "debootstrap",
};
pub const QEMU_IMG: Tool = Tool {
    program: "qemu-img",
    package: "qemu-utils",
};
pub const QEMU_SYSTEM: Tool = Tool {
    program: "qemu-system-x86_64",
    package: "qemu-system-x86",
};
pub const MKFS_EXT4: Tool = Tool {
    program: "mkfs.ext4",
    package: "e2fsprogs",
};
pub const GRUB_MKIMAGE: Tool = Tool {
    program: "grub-mkimage",
    package: "grub2-common",
};
pub const MKFS_FAT: Tool = Tool {
    program: "mkfs.fat",
    package: "dosfstools",
};
pub const MMD: Tool = Tool {
    program: "mmd",
    package: "mtools",
};
pub const MCOPY: Tool = Tool {
    program: "mcopy",
    package: "mtools",
};
pub const PG_DUMP: Tool = Tool {
    program: "pg_dump",
    package: "postgresql-client",
};
pub const DEBUGFS: Tool = Tool {
    program: "debugfs",
    package: "e2fsprogs",
};
pub const SFDISK: Tool = Tool {
    program: "sfdisk",
    package: "fdisk",
};
pub const LOSETUP: Tool = Tool {
    program: "losetup",
    package: "mount",
};
pub const CP: Tool = Tool {
    program: "cp",
    package: "coreutils",
};

impl Tool {
    /// The program's path: `PATH` first, then the usual system folders (a non-login root
    /// shell often lacks `/usr/sbin`, where mkfs lives).
    pub fn find(&self) -> Option<PathBuf> {
        super::process::find_program(self.program, std::path::Path::new("/")).or_else(|| {
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|dir| std::path::Path::new(dir).join(self.program))
                .find(|candidate| is_executable(candidate))
        })
    }

    /// `(program, version)` for a key, or a diagnostic naming the package to install.
    pub fn resolve(&self, at: &Span) -> Result<(String, String), Diagnostic> {
        if self.find().is_none() {
            return Err(
                Diagnostic::error(format!("`{}` is not installed", self.program))
                    .at(at, "this step runs it")
                    .help(format!(
                        "install the Debian package `{}`: apt-get install {}",
                        self.package, self.package
                    )),
            );
        }
        Ok((self.program.to_string(), package_version(self.package)))
    }
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The installed version of a Debian package, or `unknown`.
pub fn package_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The Debian mirror the host's apt sources use (the first `deb` source that is not a security
/// archive), read from `/etc/apt/sources.list.d/*.sources` and `/etc/apt/sources.list`.
pub fn host_mirror() -> Option<String> {
    let mut candidates = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if path.extension().is_some_and(|e| e == "sources") {
                // deb822: a stanza per source, `URIs:` and `Types:` fields.
                for stanza in text.split("\n\n") {
                    let field = |name: &str| {
                        stanza
                            .lines()
                            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                    };
                    if field("Types:").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
                        if let Some(uris) = field("URIs:") {
                            candidates.extend(uris.split_whitespace().map(str::to_string));
                        }
                    }
                }
            } else if path.extension().is_some_and(|e| e == "list") {
                candidates.extend(one_line_sources(&text));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
        candidates.extend(one_line_sources(&text));
    }
    candidates.into_iter().find(|uri| {
        !uri.contains("security") && (uri.starts_with("http") || uri.starts_with("file:"))
    })
}

fn one_line_sources(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
            (words.next() == Some("deb"))
                .then(|| words.next().map(str::to_string))
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_sources_skip_options_and_deb_src() {
        let text = "deb [arch=amd64] http://mirror.example/debian bookworm main\n\
                    deb-src http://src.example/debian bookworm main\n# deb http://commented\n";
        assert_eq!(one_line_sources(text), vec!["http://mirror.example/debian"]);
    }
}
