//! Running the external tools of the disk step (mkfs.ext4, grub-mkimage): locating them, naming
//! the Debian package that provides a missing one, and turning a failure into a [`DiskError`]
//! that says which command failed, how, and the end of what it wrote on stderr.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use super::DiskError;
pub(crate) use crate::steps::tools::{Tool, GRUB_MKIMAGE, MCOPY, MKFS_EXT4, MKFS_FAT, MMD};

/// How many bytes of stderr a failure keeps.
const STDERR_TAIL: usize = 2000;

/// Running a [`Tool`] the way the disk step needs: missing and failing tools as [`DiskError`]s.
pub(crate) trait DiskTool {
    fn locate(&self) -> Result<PathBuf, DiskError>;
    fn run<I, S>(&self, args: I, envs: &[(&str, &OsStr)]) -> Result<Vec<u8>, DiskError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>;
}

impl DiskTool for Tool {
    /// The absolute path of the program (see [`Tool::find`]).
    fn locate(&self) -> Result<PathBuf, DiskError> {
        self.find().ok_or(DiskError::ToolMissing {
            program: self.program,
            package: self.package,
        })
    }

    /// Runs the program with `args` and `envs` (added to a cleared-locale environment) and
    /// returns its stdout. A non-zero exit is an error carrying the stderr tail.
    fn run<I, S>(&self, args: I, envs: &[(&str, &OsStr)]) -> Result<Vec<u8>, DiskError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let path = self.locate()?;
        let mut command = Command::new(&path);
        command.args(args).env("LC_ALL", "C");
        for (key, value) in envs {
            command.env(key, value);
        }
        let rendered = render(&command);
        let output = command.output().map_err(|source| DiskError::Spawn {
            command: rendered.clone(),
            source,
        })?;
        if !output.status.success() {
            return Err(DiskError::ToolFailed {
                command: rendered,
                status: output.status,
                stderr_tail: tail(&output.stderr),
            });
        }
        Ok(output.stdout)
    }
}

/// A command line for messages: program and arguments, space-separated.
fn render(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last [`STDERR_TAIL`] bytes of `stderr`, lossily decoded and trimmed.
fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&stderr[start..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let tool = Tool {
            program: "vmbuild-no-such-program",
            package: "vmbuild-no-such-package",
        };
        let err = tool.run(["--version"], &[]).unwrap_err();
        assert!(matches!(err, DiskError::ToolMissing { .. }));
        assert!(err.to_string().contains("vmbuild-no-such-package"));
    }

    #[test]
    fn a_failure_keeps_the_stderr_tail() {
        let tool = Tool {
            program: "sh",
            package: "dash",
        };
        let err = tool.run(["-c", "echo boom >&2; exit 3"], &[]).unwrap_err();
        match err {
            DiskError::ToolFailed {
                status,
                stderr_tail,
                ..
            } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr_tail, "boom");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
