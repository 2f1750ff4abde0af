//! The `operations` of a `sanitize` block, in the spirit of virt-sysprep, applied by the disk
//! step to the VM's composed tree just before it becomes a disk.
//!
//! That tree is made of hard links into the store: nothing here ever writes into an existing
//! file. Files are unlinked, or replaced by a new file renamed over them; folders are kept.
//! Paths are resolved inside the tree as the VM would resolve them (a symbolic link to
//! `/var/log` points into the tree, never at the build machine's own folders).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::recipe::SanitizeOperation;
use crate::steps::{human_bytes, io_error, StepError};

/// History files removed from root's home and every user's (`shell-history`).
pub const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".zhistory",
    ".sh_history",
    ".ash_history",
    ".python_history",
    ".psql_history",
    ".mysql_history",
    ".sqlite_history",
    ".node_repl_history",
    ".rediscli_history",
    ".lesshst",
    ".viminfo",
    ".wget-hsts",
    ".local/share/fish/fish_history",
];

/// The first-boot unit of `ssh-host-keys`.
pub const SSH_KEYGEN_UNIT: &str = "vmbuild-ssh-host-keys.service";
/// What it says: host keys made before sshd starts, on every boot where some are missing.
pub const SSH_KEYGEN_UNIT_TEXT: &str = "\
# Written by vmbuild (sanitize \"ssh-host-keys\"): the image ships without SSH host keys, so
# that every VM made from it has its own. This makes the missing ones before sshd starts.
[Unit]
Description=Generate the SSH host keys this machine lacks (vmbuild)
DefaultDependencies=no
After=local-fs.target systemd-random-seed.service
Before=ssh.service ssh.socket sshd.service shutdown.target
Conflicts=shutdown.target
ConditionPathExists=/usr/sbin/sshd
ConditionFileIsExecutable=/usr/bin/ssh-keygen

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target ssh.service
";

/// Where vmbuild's provisioners and builds stage files inside a tree (each removes its own
/// afterwards; a provisioner may have copied or recreated them).
const VMBUILD_STAGING: &[&str] = &[
    crate::steps::provision_shell::SCRIPT_IN_TREE,
    crate::steps::provision_puppet::PUPPET_DIR,
    crate::steps::source::BUILD_DIR_IN_TREE,
];

/// Puppet's state, reports and file backups, under each of its usual `vardir`s (Debian's
/// package, older Debian, Puppet's own packages).
const PUPPET_VARDIRS: &[&str] = &[
    "/var/cache/puppet",
    "/var/lib/puppet",
    "/opt/puppetlabs/puppet/cache",
];
const PUPPET_LEFTOVERS: &[&str] = &[
    "state",
    "reports",
    "clientbucket",
    "client_data",
    "client_yaml",
];

/// What one operation did, for the step's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scrubbed {
    /// Files (and links) unlinked, including those inside removed folders.
    pub removed: u64,
    /// Files replaced by an empty file with the same owner and mode.
    pub emptied: u64,
    /// Bytes of the files removed or emptied.
    pub bytes: u64,
    /// Other things done, in words.
    pub notes: Vec<String>,
}

impl Scrubbed {
    /// One line: `logs: removed 3 files, emptied 8 (1.2 MiB)`.
    pub fn summary(&self, operation: SanitizeOperation) -> String {
        let mut parts = vec![format!(
            "removed {} file{}",
            self.removed,
            if self.removed == 1 { "" } else { "s" }
        )];
        if self.emptied > 0 {
            parts.push(format!("emptied {}", self.emptied));
        }
        let mut line = format!("{}: {}", operation.name(), parts.join(", "));
        if self.bytes > 0 {
            line.push_str(&format!(" ({})", human_bytes(self.bytes)));
        }
        for note in &self.notes {
            line.push_str(&format!("; {note}"));
        }
        line
    }

    fn add(&mut self, other: Scrubbed) {
        self.removed += other.removed;
        self.emptied += other.emptied;
        self.bytes += other.bytes;
        self.notes.extend(other.notes);
    }
}

/// Apply `operations` to the tree at `root`, each once, in their fixed order; what each did.
pub fn scrub(
    root: &Path,
    operations: &[SanitizeOperation],
) -> Result<Vec<(SanitizeOperation, Scrubbed)>, StepError> {
    let tree = Tree { root };
    let chosen: BTreeSet<SanitizeOperation> = operations.iter().copied().collect();
    let mut done = Vec::new();
    for operation in chosen {
        let result = match operation {
            SanitizeOperation::ShellHistory => tree.shell_history(),
            SanitizeOperation::SshHostKeys => tree.ssh_host_keys(),
            SanitizeOperation::Logs => tree.logs(),
            SanitizeOperation::MachineId => tree.machine_id(),
            SanitizeOperation::AptCache => tree.apt_cache(),
            SanitizeOperation::ProvisioningLeftovers => tree.provisioning_leftovers(),
            SanitizeOperation::TmpFiles => tree.tmp_files(),
        }?;
        done.push((operation, result));
    }
    Ok(done)
}

/// The VM's root tree, seen from the build machine.
struct Tree<'a> {
    root: &'a Path,
}

/// The parts of an absolute or relative path, as path components.
fn parts(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

impl Tree<'_> {
    /// The build machine's path of the VM's `vm_path`, resolved inside the tree as the VM
    /// would (symbolic links followed, absolute ones from the tree's root); the last part is
    /// followed only when `follow_last`. `None` when a part on the way is missing or a file.
    fn resolve(&self, vm_path: &str, follow_last: bool) -> Option<PathBuf> {
        let mut todo: std::collections::VecDeque<OsString> = parts(Path::new(vm_path)).into();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(part) = todo.pop_front() {
            if part == ".." {
                resolved.pop();
                continue;
            }
            let is_last = todo.is_empty();
            if is_last && !follow_last {
                resolved.push(part);
                break;
            }
            let mut candidate = self.root.to_path_buf();
            candidate.extend(&resolved);
            candidate.push(&part);
            match candidate.symlink_metadata() {
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return None;
                    }
                    let target = std::fs::read_link(&candidate).ok()?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for p in parts(&target).into_iter().rev() {
                        todo.push_front(p);
                    }
                }
                Ok(meta) if meta.is_dir() || is_last => resolved.push(part),
                Err(_) if is_last => resolved.push(part),
                _ => return None,
            }
        }
        let mut path = self.root.to_path_buf();
        path.extend(&resolved);
        Some(path)
    }

    /// Where the entry `vm_path` itself is (a link there is not followed).
    fn locate(&self, vm_path: &str) -> Option<PathBuf> {
        self.resolve(vm_path, false)
    }

    /// The build machine's path of the folder `vm_path`, if it is one (links followed).
    fn folder(&self, vm_path: &str) -> Option<PathBuf> {
        self.resolve(vm_path, true)
            .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()))
    }

    /// Remove whatever is at the VM's `vm_path` (a file, a link, or a folder and everything
    /// in it); nothing when there is nothing.
    fn remove(&self, vm_path: &str) -> Result<Scrubbed, StepError> {
        match self.locate(vm_path) {
            Some(path) => remove_entry(&path),
            None => Ok(Scrubbed::default()),
        }
    }

    /// Remove everything inside the VM's folder `vm_path` for which `keep` says no; the
    /// folder stays.
    fn clear(&self, vm_path: &str, keep: &dyn Fn(&str) -> bool) -> Result<Scrubbed, StepError> {
        let mut done = Scrubbed::default();
        let Some(dir) = self.folder(vm_path) else {
            return Ok(done);
        };
        for entry in std::fs::read_dir(&dir).map_err(io_error("list", &dir))? {
            let entry = entry.map_err(io_error("list", &dir))?;
            if keep(&entry.file_name().to_string_lossy()) {
                continue;
            }
            done.add(remove_entry(&entry.path())?);
        }
        Ok(done)
    }

    /// Every home folder: root's, those under `/home`, and those `/etc/passwd` names.
    fn homes(&self) -> Vec<String> {
        let mut homes: BTreeSet<String> = BTreeSet::from(["/root".to_string()]);
        if let Some(home) = self.folder("/home") {
            for entry in std::fs::read_dir(home).into_iter().flatten().flatten() {
                homes.insert(format!("/home/{}", entry.file_name().to_string_lossy()));
            }
        }
        if let Some(passwd) = self.locate("/etc/passwd") {
            if let Ok(text) = std::fs::read_to_string(passwd) {
                for line in text.lines() {
                    if let Some(home) = line.split(':').nth(5) {
                        if home.starts_with('/') {
                            homes.insert(home.to_string());
                        }
                    }
                }
            }
        }
        homes.into_iter().collect()
    }

    fn shell_history(&self) -> Result<Scrubbed, StepError> {
        let mut done = Scrubbed::default();
        for home in self.homes() {
            if self.folder(&home).is_none() {
                continue;
            }
            for file in HISTORY_FILES {
                done.add(self.remove(&format!("{}/{file}", home.trim_end_matches('/')))?);
            }
        }
        Ok(done)
    }

    fn ssh_host_keys(&self) -> Result<Scrubbed, StepError> {
        let mut done = self.clear("/etc/ssh", &|name| !name.starts_with("ssh_host_"))?;
        let Some(units) = self.ensure_folder("/etc/systemd/system")? else {
            done.notes
                .push("no /etc/systemd/system: no first-boot unit installed".into());
            return Ok(done);
        };
        let unit = units.join(SSH_KEYGEN_UNIT);
        crate::steps::tree::replace_file(&unit, SSH_KEYGEN_UNIT_TEXT.as_bytes())?;
        std::fs::set_permissions(&unit, std::fs::Permissions::from_mode(0o644))
            .map_err(io_error("chmod", &unit))?;
        for wants in ["multi-user.target.wants", "ssh.service.wants"] {
            let dir = units.join(wants);
            std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
            let link = dir.join(SSH_KEYGEN_UNIT);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}"), &link)
                .map_err(io_error("link", &link))?;
        }
        done.notes.push(format!(
            "{SSH_KEYGEN_UNIT} makes new ones at first boot, before sshd"
        ));
        Ok(done)
    }

    /// The VM's folder `vm_path`, created (with its parents, mode 0755) when missing; `None`
    /// when something that is not a folder is in the way.
    fn ensure_folder(&self, vm_path: &str) -> Result<Option<PathBuf>, StepError> {
        if let Some(dir) = self.folder(vm_path) {
            return Ok(Some(dir));
        }
        let mut so_far = String::new();
        for part in vm_path.split('/').filter(|p| !p.is_empty()) {
            so_far.push('/');
            so_far.push_str(part);
            if self.folder(&so_far).is_some() {
                continue;
            }
            let Some(path) = self.locate(&so_far) else {
                return Ok(None);
            };
            if path.symlink_metadata().is_ok() {
                return Ok(None);
            }
            std::fs::create_dir(&path).map_err(io_error("create", &path))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(io_error("chmod", &path))?;
        }
        Ok(self.folder(vm_path))
    }

    fn logs(&self) -> Result<Scrubbed, StepError> {
        let mut done = self.remove("/var/log/installer")?;
        let Some(logs) = self.folder("/var/log") else {
            return Ok(done);
        };
        let mut files = Vec::new();
        for entry in walkdir::WalkDir::new(&logs).follow_links(false) {
            let entry = entry.map_err(|e| StepError::Io {
                action: "walk",
                path: logs.clone(),
                source: std::io::Error::other(e),
            })?;
            if entry.file_type().is_file() {
                files.push(entry.into_path());
            }
        }
        let journal = logs.join("journal");
        for path in files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if path.starts_with(&journal) || is_rotated(&name) {
                done.add(remove_entry(&path)?);
            } else {
                done.add(empty_file(&path)?);
            }
        }
        Ok(done)
    }

    fn machine_id(&self) -> Result<Scrubbed, StepError> {
        let mut done = Scrubbed::default();
        if let Some(path) = self.locate("/etc/machine-id") {
            match path.symlink_metadata() {
                Ok(meta) if meta.is_file() => {
                    if meta.len() > 0 {
                        done.add(empty_file(&path)?);
                    }
                }
                Ok(_) => {}
                Err(_) if path.parent().is_some_and(Path::is_dir) => {
                    crate::steps::tree::replace_file(&path, b"")?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
                        .map_err(io_error("chmod", &path))?;
                    done.notes.push("created an empty /etc/machine-id".into());
                }
                Err(_) => {}
            }
        }
        if let Some(path) = self.locate("/var/lib/dbus/machine-id") {
            if path
                .symlink_metadata()
                .is_ok_and(|m| !m.file_type().is_symlink())
            {
                done.add(remove_entry(&path)?);
                std::os::unix::fs::symlink("/etc/machine-id", &path)
                    .map_err(io_error("link", &path))?;
                done.notes
                    .push("/var/lib/dbus/machine-id is a link to /etc/machine-id".into());
            }
        }
        Ok(done)
    }

    fn apt_cache(&self) -> Result<Scrubbed, StepError> {
        let mut done = self.clear("/var/cache/apt", &|name| !name.ends_with(".bin"))?;
        done.add(self.clear("/var/cache/apt/archives", &|name| !name.ends_with(".deb"))?);
        done.add(self.clear("/var/cache/apt/archives/partial", &|_| false)?);
        done.add(self.clear("/var/lib/apt/lists", &|name| {
            name == "lock" || name == "partial"
        })?);
        done.add(self.clear("/var/lib/apt/lists/partial", &|_| false)?);
        Ok(done)
    }

    fn provisioning_leftovers(&self) -> Result<Scrubbed, StepError> {
        let mut done = Scrubbed::default();
        for path in VMBUILD_STAGING {
            done.add(self.remove(&format!("/{path}"))?);
        }
        if let Some(policy) = self.locate("/usr/sbin/policy-rc.d") {
            let ours = std::fs::read(&policy)
                .is_ok_and(|bytes| bytes.starts_with(crate::steps::chroot::POLICY_RC_D));
            if ours {
                done.add(remove_entry(&policy)?);
            }
        }
        done.add(self.remove("/root/.cache")?);
        for vardir in PUPPET_VARDIRS {
            for leftover in PUPPET_LEFTOVERS {
                done.add(self.remove(&format!("{vardir}/{leftover}"))?);
            }
        }
        // debootstrap copies the build machine's resolver configuration into the tree.
        if let Some(resolv) = self.locate("/etc/resolv.conf") {
            let host = std::fs::read("/etc/resolv.conf").ok();
            let meta = resolv.symlink_metadata().ok();
            if meta.is_some_and(|m| m.is_file() && m.len() > 0)
                && host.is_some_and(|h| std::fs::read(&resolv).is_ok_and(|mine| mine == h))
            {
                done.add(empty_file(&resolv)?);
                done.notes
                    .push("/etc/resolv.conf held the build machine's resolvers".into());
            }
        }
        Ok(done)
    }

    fn tmp_files(&self) -> Result<Scrubbed, StepError> {
        let mut done = self.clear("/tmp", &|_| false)?;
        done.add(self.clear("/var/tmp", &|_| false)?);
        Ok(done)
    }
}

/// A log that was rotated away: `syslog.1`, `dpkg.log.2.gz`, `auth.log-20240101`, `x.old`,
/// and compressed ones.
fn is_rotated(name: &str) -> bool {
    let compressed = [".gz", ".xz", ".bz2", ".zst", ".lz4", ".old"];
    if compressed.iter().any(|ext| name.ends_with(ext)) {
        return true;
    }
    let digits_after = |sep: char| {
        name.rsplit_once(sep).is_some_and(|(stem, tail)| {
            !stem.is_empty() && !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit())
        })
    };
    digits_after('.') || digits_after('-')
}

/// Unlink `path` (a file, link or folder with everything in it), counting what goes.
fn remove_entry(path: &Path) -> Result<Scrubbed, StepError> {
    let mut done = Scrubbed::default();
    let Ok(meta) = path.symlink_metadata() else {
        return Ok(done);
    };
    if meta.is_dir() {
        for entry in walkdir::WalkDir::new(path)
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            if !entry.file_type().is_dir() {
                done.removed += 1;
                done.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        // Unlinks only: hard links elsewhere (the store) keep their content.
        std::fs::remove_dir_all(path).map_err(io_error("remove", path))?;
    } else {
        done.removed += 1;
        if meta.is_file() {
            done.bytes += meta.len();
        }
        std::fs::remove_file(path).map_err(io_error("remove", path))?;
    }
    Ok(done)
}

/// Replace the file at `path` by an empty one with the same owner, mode and extended
/// attributes: a new file renamed over it, never a truncation of a file the store shares.
fn empty_file(path: &Path) -> Result<Scrubbed, StepError> {
    let meta = path.symlink_metadata().map_err(io_error("inspect", path))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string());
    let fresh = dir.join(format!(
        ".{}.vmbuild-sanitize",
        name.as_deref().unwrap_or("file")
    ));
    let _ = std::fs::remove_file(&fresh);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&fresh)
        .map_err(io_error("create", &fresh))?;
    std::os::unix::fs::lchown(&fresh, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_error("chown", &fresh))?;
    std::fs::set_permissions(
        &fresh,
        std::fs::Permissions::from_mode(meta.mode() & 0o7777),
    )
    .map_err(io_error("chmod", &fresh))?;
    if let Ok(names) = xattr::list(path) {
        for attribute in names {
            if let Ok(Some(value)) = xattr::get(path, &attribute) {
                let _ = xattr::set(&fresh, &attribute, &value);
            }
        }
    }
    std::fs::rename(&fresh, path).map_err(io_error("replace", path))?;
    Ok(Scrubbed {
        emptied: 1,
        bytes: meta.len(),
        ..Scrubbed::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn write(root: &Path, vm_path: &str, text: &str) {
        let path = root.join(vm_path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Every entry under `dir`: path → (kind, inode, links, mode, content or link target).
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, u64, u64, u32, Vec<u8>)> {
        walkdir::WalkDir::new(dir)
            .sort_by_file_name()
            .into_iter()
            .map(|e| e.unwrap())
            .map(|e| {
                let meta = e.path().symlink_metadata().unwrap();
                let (kind, content) = if meta.file_type().is_symlink() {
                    (
                        "link",
                        std::fs::read_link(e.path())
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    )
                } else if meta.is_dir() {
                    ("dir", Vec::new())
                } else {
                    ("file", std::fs::read(e.path()).unwrap())
                };
                (
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    (
                        kind.to_string(),
                        meta.ino(),
                        meta.nlink(),
                        meta.mode(),
                        content,
                    ),
                )
            })
            .collect()
    }

    /// A tree with something for every operation, and a trap: a home that is an absolute
    /// link to a folder of the build machine.
    fn tree(store: &Path, victim: &Path) {
        write(store, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\npostgres:x:105:110::/var/lib/postgresql:/bin/bash\nevil:x:1001:1001::/home/evil:/bin/sh\n");
        write(store, "/root/.bash_history", "mysql -uroot -phunter2\n");
        write(store, "/root/notes.txt", "kept\n");
        write(store, "/home/alice/.viminfo", "'0 /etc/secret.conf\n");
        write(
            store,
            "/home/alice/.local/share/fish/fish_history",
            "- cmd: ls\n",
        );
        write(
            store,
            "/var/lib/postgresql/.psql_history",
            "\\password app\n",
        );
        std::os::unix::fs::symlink(victim, store.join("home/evil")).unwrap();
        write(store, "/etc/ssh/ssh_host_ed25519_key", "PRIVATE\n");
        write(
            store,
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "ssh-ed25519 AAAA\n",
        );
        write(store, "/etc/ssh/sshd_config", "PermitRootLogin no\n");
        std::fs::create_dir_all(store.join("etc/systemd/system")).unwrap();
        write(store, "/var/log/dpkg.log", "install postgresql\n");
        write(store, "/var/log/syslog.1", "old\n");
        write(store, "/var/log/apt/term.log", "Setting up\n");
        write(store, "/var/log/apt/eipp.log.xz", "xz\n");
        write(store, "/var/log/journal/0123/system.journal", "LPKSHHRH\n");
        write(store, "/var/log/installer/syslog", "d-i\n");
        std::fs::create_dir_all(store.join("var/log/postgresql")).unwrap();
        write(
            store,
            "/etc/machine-id",
            "0123456789abcdef0123456789abcdef\n",
        );
        write(
            store,
            "/var/lib/dbus/machine-id",
            "0123456789abcdef0123456789abcdef\n",
        );
        write(store, "/var/cache/apt/pkgcache.bin", "cache\n");
        write(store, "/var/cache/apt/archives/lock", "");
        write(
            store,
            "/var/cache/apt/archives/nginx_1.22_amd64.deb",
            "deb\n",
        );
        write(store, "/var/cache/apt/archives/partial/x.deb", "part\n");
        write(store, "/var/lib/apt/lists/lock", "");
        write(
            store,
            "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
            "r\n",
        );
        std::fs::create_dir_all(store.join("var/lib/apt/lists/partial")).unwrap();
        write(store, "/tmp/vmbuild-provision.sh", "#!/bin/sh\n");
        write(store, "/tmp/vmbuild-puppet/site.pp", "node default {}\n");
        write(store, "/tmp/build.log", "tmp\n");
        write(store, "/var/tmp/cache.db", "tmp\n");
        write(store, "/root/.cache/pip/http/x", "pip\n");
        write(
            store,
            "/var/cache/puppet/state/last_run_summary.yaml",
            "state\n",
        );
        write(store, "/var/cache/puppet/reports/host/r.yaml", "report\n");
        write(
            store,
            "/var/cache/puppet/clientbucket/a/contents",
            "old config with password\n",
        );
        write(store, "/var/cache/puppet/facts.d/keep.txt", "kept\n");
        std::fs::create_dir_all(store.join("usr/sbin")).unwrap();
        std::fs::write(
            store.join("usr/sbin/policy-rc.d"),
            crate::steps::chroot::POLICY_RC_D,
        )
        .unwrap();
        if let Ok(host) = std::fs::read("/etc/resolv.conf") {
            std::fs::write(store.join("etc/resolv.conf"), host).unwrap();
        }
    }

    #[test]
    fn every_operation_scrubs_a_tree_of_hard_links_and_leaves_the_store_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (store, vm, victim) = (
            dir.path().join("store"),
            dir.path().join("vm"),
            dir.path().join("victim"),
        );
        write(
            &victim,
            "/.bash_history",
            "the build machine's own history\n",
        );
        tree(&store, &victim);
        let is_root = nix::unistd::Uid::effective().is_root();
        let dpkg_log = store.join("var/log/dpkg.log");
        std::fs::set_permissions(&dpkg_log, std::fs::Permissions::from_mode(0o640)).unwrap();
        if is_root {
            std::os::unix::fs::chown(&dpkg_log, Some(0), Some(4)).unwrap();
        }
        let before = snapshot(&store);
        std::fs::create_dir(&vm).unwrap();
        crate::steps::tree::link_tree(&store, &vm).unwrap();
        assert_eq!(
            std::fs::metadata(vm.join("root/.bash_history"))
                .unwrap()
                .ino(),
            std::fs::metadata(store.join("root/.bash_history"))
                .unwrap()
                .ino(),
            "the VM's tree is hard links to the store"
        );
        let all = [
            SanitizeOperation::TmpFiles,
            SanitizeOperation::ShellHistory,
            SanitizeOperation::SshHostKeys,
            SanitizeOperation::Logs,
            SanitizeOperation::MachineId,
            SanitizeOperation::AptCache,
            SanitizeOperation::ProvisioningLeftovers,
        ];
        let done: BTreeMap<SanitizeOperation, Scrubbed> =
            scrub(&vm, &all).unwrap().into_iter().collect();
        assert_eq!(done.len(), 7);

        // The store is byte for byte, inode for inode, as it was (link counts aside).
        let after = snapshot(&store);
        let strip = |m: &BTreeMap<PathBuf, (String, u64, u64, u32, Vec<u8>)>| {
            m.iter()
                .map(|(p, (k, i, _, mode, c))| (p.clone(), (k.clone(), *i, *mode, c.clone())))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(strip(&before), strip(&after));
        assert_eq!(
            std::fs::read_to_string(victim.join(".bash_history")).unwrap(),
            "the build machine's own history\n"
        );

        let gone = |p: &str| vm.join(p).symlink_metadata().is_err();
        let kept = |p: &str| vm.join(p).symlink_metadata().is_ok();
        let text = |p: &str| std::fs::read_to_string(vm.join(p)).unwrap();
        // shell-history
        for p in [
            "root/.bash_history",
            "home/alice/.viminfo",
            "home/alice/.local/share/fish/fish_history",
            "var/lib/postgresql/.psql_history",
        ] {
            assert!(gone(p), "{p}");
        }
        assert!(kept("root/notes.txt") && kept("home/evil"));
        assert_eq!(done[&SanitizeOperation::ShellHistory].removed, 4);
        // ssh-host-keys
        assert!(gone("etc/ssh/ssh_host_ed25519_key") && gone("etc/ssh/ssh_host_ed25519_key.pub"));
        assert!(kept("etc/ssh/sshd_config"));
        assert_eq!(
            text(&format!("etc/systemd/system/{SSH_KEYGEN_UNIT}")),
            SSH_KEYGEN_UNIT_TEXT
        );
        for wants in ["multi-user.target.wants", "ssh.service.wants"] {
            assert_eq!(
                std::fs::read_link(
                    vm.join(format!("etc/systemd/system/{wants}/{SSH_KEYGEN_UNIT}"))
                )
                .unwrap(),
                Path::new("/etc/systemd/system").join(SSH_KEYGEN_UNIT)
            );
        }
        // logs: current logs emptied with their owner and mode, old ones and journals gone
        assert_eq!(text("var/log/dpkg.log"), "");
        assert_eq!(text("var/log/apt/term.log"), "");
        let meta = std::fs::metadata(vm.join("var/log/dpkg.log")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        if is_root {
            assert_eq!((meta.uid(), meta.gid()), (0, 4));
        }
        for p in [
            "var/log/syslog.1",
            "var/log/apt/eipp.log.xz",
            "var/log/journal/0123/system.journal",
            "var/log/installer",
        ] {
            assert!(gone(p), "{p}");
        }
        assert!(vm.join("var/log/journal/0123").is_dir() && vm.join("var/log/postgresql").is_dir());
        let logs = &done[&SanitizeOperation::Logs];
        assert_eq!((logs.removed, logs.emptied), (4, 2), "{logs:?}");
        // machine-id
        assert_eq!(text("etc/machine-id"), "");
        assert_eq!(
            std::fs::read_link(vm.join("var/lib/dbus/machine-id")).unwrap(),
            Path::new("/etc/machine-id")
        );
        // apt-cache
        for p in [
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/archives/nginx_1.22_amd64.deb",
            "var/cache/apt/archives/partial/x.deb",
            "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
        ] {
            assert!(gone(p), "{p}");
        }
        for p in [
            "var/cache/apt/archives/lock",
            "var/cache/apt/archives/partial",
            "var/lib/apt/lists/lock",
            "var/lib/apt/lists/partial",
        ] {
            assert!(kept(p), "{p}");
        }
        // provisioning-leftovers and tmp-files
        for p in [
            "tmp/vmbuild-provision.sh",
            "tmp/vmbuild-puppet",
            "tmp/build.log",
            "var/tmp/cache.db",
            "root/.cache",
            "var/cache/puppet/state",
            "var/cache/puppet/reports",
            "var/cache/puppet/clientbucket",
            "usr/sbin/policy-rc.d",
        ] {
            assert!(gone(p), "{p}");
        }
        assert!(kept("var/cache/puppet/facts.d/keep.txt"));
        assert!(vm.join("tmp").is_dir() && vm.join("var/tmp").is_dir());
        if store.join("etc/resolv.conf").exists() {
            assert_eq!(text("etc/resolv.conf"), "");
        }
        let summary = done[&SanitizeOperation::Logs].summary(SanitizeOperation::Logs);
        assert!(
            summary.starts_with("logs: removed 4 files, emptied 2 ("),
            "{summary}"
        );
    }

    #[test]
    fn paths_resolve_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        write(&root, "/var/real/log/x", "x");
        std::os::unix::fs::symlink("/var/real/log", root.join("var/log")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("var/real/up")).unwrap();
        let tree = Tree { root: &root };
        assert_eq!(tree.folder("/var/log"), Some(root.join("var/real/log")));
        assert_eq!(tree.locate("/var/log/x"), Some(root.join("var/real/log/x")));
        assert_eq!(tree.locate("/var/log"), Some(root.join("var/log")));
        // `..` and links never climb out of the tree.
        assert_eq!(tree.folder("/var/real/up/up"), None);
        assert_eq!(tree.folder("/var/real/up/var"), Some(root.join("var")));
        assert_eq!(tree.folder("/../../var"), Some(root.join("var")));
    }

    #[test]
    fn rotated_logs_are_told_from_current_ones() {
        for name in [
            "syslog.1",
            "dpkg.log.2.gz",
            "auth.log-20240101",
            "x.old",
            "a.xz",
        ] {
            assert!(is_rotated(name), "{name}");
        }
        for name in [
            "dpkg.log",
            "php8.2-fpm.log",
            "Xorg.0.log",
            "wtmp",
            "lastlog",
        ] {
            assert!(!is_rotated(name), "{name}");
        }
    }

    #[test]
    fn the_first_boot_unit_is_valid_for_systemd() {
        let Ok(output) = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
        else {
            eprintln!("skipped: no systemd-analyze");
            return;
        };
        assert!(output.status.success());
        let dir = tempfile::tempdir().unwrap();
        let unit = dir.path().join(SSH_KEYGEN_UNIT);
        std::fs::write(&unit, SSH_KEYGEN_UNIT_TEXT).unwrap();
        let output = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "{stderr}"
        );
    }
}
