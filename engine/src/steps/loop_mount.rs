//! An ext4 partition of a raw disk image, mounted read-only through a loop device set at the
//! partition's offset (no udev, no partition devices needed), unmounted and detached on drop,
//! whatever happens meanwhile. Used to import a template from an image and to search the files
//! inside a finished disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::MsFlags;

use super::{io_error, StepError};

/// A mounted partition; `path()` is where its files are.
pub struct LoopMount {
    device: String,
    target: PathBuf,
    mounted: bool,
}

impl LoopMount {
    /// Mount the ext4 file system at bytes `offset..offset + size` of `raw` on `target`
    /// (created), read-only, without replaying its journal, with `flags` besides. Needs root.
    pub fn ext4_read_only(
        raw: &Path,
        offset: u64,
        size: u64,
        target: &Path,
        flags: MsFlags,
    ) -> Result<LoopMount, StepError> {
        let output = Command::new("losetup")
            .args(["--find", "--show", "--read-only", "-o"])
            .arg(offset.to_string())
            .arg("--sizelimit")
            .arg(size.to_string())
            .arg(raw)
            .output()
            .map_err(|source| StepError::Spawn {
                program: "losetup".into(),
                source,
            })?;
        if !output.status.success() {
            return Err(StepError::Unmet(format!(
                "cannot attach `{}` to a loop device (this needs root): {}",
                raw.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let device = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let mut mount = LoopMount {
            device,
            target: target.to_path_buf(),
            mounted: false,
        };
        std::fs::create_dir_all(target).map_err(io_error("create", target))?;
        nix::mount::mount(
            Some(mount.device.as_str()),
            target,
            Some("ext4"),
            MsFlags::MS_RDONLY | flags,
            Some("noload"),
        )
        .map_err(|errno| StepError::Io {
            action: "mount",
            path: target.to_path_buf(),
            source: errno.into(),
        })?;
        mount.mounted = true;
        Ok(mount)
    }

    /// Where the partition's files are.
    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}
