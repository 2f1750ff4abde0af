//! Running commands inside a root tree: `/proc`, `/sys` and `/dev` mounted for the duration and
//! always unmounted afterwards (also on failure or cancellation, by a drop guard), services kept
//! from starting (`policy-rc.d`), and the host's DNS lent while the commands run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::process::{self, Invocation};
use super::{io_error, RunContext, StepError};

/// The `policy-rc.d` vmbuild puts in a tree while commands run there (removed afterwards).
pub const POLICY_RC_D: &[u8] =
    b"#!/bin/sh\n# vmbuild: no services start while the image is built\nexit 101\n";

/// Mounts and temporary files inside a root tree, undone on drop.
pub struct Chroot {
    root: PathBuf,
    mounted: Vec<PathBuf>,
    /// Files vmbuild put in place for the duration, with what was there before.
    restore: Vec<(PathBuf, Option<Restore>)>,
}

enum Restore {
    File(Vec<u8>),
    Symlink(PathBuf),
}

impl Chroot {
    /// Prepare `root` for running commands in it.
    pub fn enter(root: &Path) -> Result<Chroot, StepError> {
        let mut chroot = Chroot {
            root: root.to_path_buf(),
            mounted: Vec::new(),
            restore: Vec::new(),
        };
        chroot.mount("proc", "proc", MsFlags::empty(), Some("proc"))?;
        chroot.mount("sysfs", "sys", MsFlags::empty(), Some("sysfs"))?;
        chroot.mount("/dev", "dev", MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        // No service may start inside the tree while packages are installed.
        chroot.put("usr/sbin/policy-rc.d", POLICY_RC_D, 0o755)?;
        // The host's name service, so apt and friends can reach the network.
        if let Ok(resolv) = std::fs::read("/etc/resolv.conf") {
            chroot.put("etc/resolv.conf", &resolv, 0o644)?;
        }
        Ok(chroot)
    }

    fn mount(
        &mut self,
        source: &str,
        target: &str,
        flags: MsFlags,
        fstype: Option<&str>,
    ) -> Result<(), StepError> {
        let path = self.root.join(target);
        std::fs::create_dir_all(&path).map_err(io_error("create", &path))?;
        mount(Some(source), &path, fstype, flags, None::<&str>).map_err(|errno| StepError::Io {
            action: "mount",
            path: path.clone(),
            source: errno.into(),
        })?;
        self.mounted.push(path);
        Ok(())
    }

    /// Put a file in place for the duration, remembering what to restore.
    fn put(&mut self, relative: &str, bytes: &[u8], mode: u32) -> Result<(), StepError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.root.join(relative);
        let before = match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => Some(Restore::Symlink(
                std::fs::read_link(&path).map_err(io_error("read", &path))?,
            )),
            Ok(_) => Some(Restore::File(
                std::fs::read(&path).map_err(io_error("read", &path))?,
            )),
            Err(_) => None,
        };
        super::tree::replace_file(&path, bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io_error("chmod", &path))?;
        self.restore.push((path, before));
        Ok(())
    }

    /// Run a program inside the tree, logging like any step command.
    pub async fn run(
        &self,
        program: &str,
        args: &[&str],
        env: BTreeMap<String, String>,
        ctx: &RunContext,
    ) -> Result<(), StepError> {
        let mut all_args = vec![self.root.display().to_string(), program.to_string()];
        all_args.extend(args.iter().map(|a| a.to_string()));
        let mut env = env;
        env.entry("PATH".into()).or_insert_with(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        env.entry("DEBIAN_FRONTEND".into())
            .or_insert_with(|| "noninteractive".into());
        env.entry("HOME".into()).or_insert_with(|| "/root".into());
        env.entry("LANG".into()).or_insert_with(|| "C.UTF-8".into());
        process::run(
            Invocation {
                program: "chroot".into(),
                args: all_args,
                env,
                cwd: PathBuf::from("/"),
            },
            ctx,
        )
        .await
    }

    /// Undo everything now, reporting a failure to unmount.
    pub fn leave(mut self) -> Result<(), StepError> {
        self.undo()
    }

    fn undo(&mut self) -> Result<(), StepError> {
        let mut first_error = None;
        while let Some((path, before)) = self.restore.pop() {
            let _ = std::fs::remove_file(&path);
            let restored = match before {
                Some(Restore::File(bytes)) => std::fs::write(&path, bytes),
                Some(Restore::Symlink(target)) => std::os::unix::fs::symlink(target, &path),
                None => Ok(()),
            };
            if let Err(source) = restored {
                first_error.get_or_insert(StepError::Io {
                    action: "restore",
                    path,
                    source,
                });
            }
        }
        while let Some(path) = self.mounted.pop() {
            // A process left behind may hold the mount: detach it rather than fail.
            if let Err(errno) =
                umount2(&path, MntFlags::empty()).or_else(|_| umount2(&path, MntFlags::MNT_DETACH))
            {
                first_error.get_or_insert(StepError::Io {
                    action: "unmount",
                    path,
                    source: errno.into(),
                });
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            tracing::warn!("leaving the build chroot: {e}");
        }
    }
}

/// Where the N-th provisioner of a template sits in the graph: its id, the tree step it
/// follows, and the recipe text it came from.
pub struct Provisioner {
    pub id: String,
    pub after: Vec<String>,
    pub span: crate::diag::Span,
}

impl Provisioner {
    pub fn new(
        template: &crate::recipe::Named<crate::recipe::TemplateBlock>,
        index: usize,
        previous: &str,
    ) -> Provisioner {
        use crate::recipe::Seg;
        Provisioner {
            id: format!("template.{}.provision.{index}", template.name),
            after: vec![previous.to_string()],
            span: template
                .spans
                .value(&[Seg::Key("provision".into()), Seg::Index(index)])
                .unwrap_or_else(|| template.header()),
        }
    }
}

/// Copy the upstream tree into the step's output; the tree a provisioner works on.
pub fn copy_upstream_tree(ctx: &RunContext) -> Result<(), StepError> {
    let base = ctx
        .upstream
        .values()
        .next()
        .cloned()
        .expect("a provisioner follows its tree");
    super::tree::copy_tree(&base, &ctx.out)
}

/// Unmount (lazily, deepest first) everything mounted at or below `path`: what a killed
/// debootstrap or provisioner may leave in a staging folder, which could not be removed
/// otherwise.
pub fn unmount_below(path: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = path.display().to_string();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|target| *target == prefix || target.starts_with(&format!("{prefix}/")))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let _ = umount2(Path::new(target), MntFlags::MNT_DETACH);
    }
}

/// Whether `root/path` is mounted (for tests: nothing must stay mounted).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let target = path.display().to_string();
    mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(target.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmount_below_removes_every_mount_under_a_folder() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (outer, inner) = (
            dir.path().join("root/proc"),
            dir.path().join("root/proc/sub"),
        );
        std::fs::create_dir_all(&outer).unwrap();
        mount(
            Some("tmpfs"),
            &outer,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::create_dir_all(&inner).unwrap();
        mount(
            Some("tmpfs"),
            &inner,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        assert!(is_mounted(&outer) && is_mounted(&inner));
        unmount_below(dir.path());
        assert!(!is_mounted(&outer) && !is_mounted(&inner));
        std::fs::remove_dir_all(dir.path().join("root")).unwrap();
    }
}
