//! The `sanitize` block: what is scrubbed from the VM and what must appear nowhere in it.
//!
//! - [`scrub`]: the `operations` (shell history, SSH host keys, logs, machine id, apt's cache,
//!   provisioning leftovers, temporary files), applied by the disk step to the composed tree
//!   before it becomes a disk; they are part of the disk step's key.
//! - [`forbid`]: the forbidden strings (`forbid`, `forbid_files`), checked at plan time.
//! - [`scan`]: the `sanitize.scan` step, which searches every byte of the raw disk and of every
//!   output for them ([`matcher`]), the content of compressed files inside the file system too
//!   ([`compressed`]), and says where each occurrence is ([`locate`]).

pub mod compressed;
pub mod forbid;
pub mod locate;
pub mod matcher;
pub mod scan;
pub mod scrub;

pub use scan::{ScanStep, ScannedOutput, SCAN_ID};

#[cfg(test)]
pub(crate) mod testutil {
    //! A small tree that becomes a disk (it has a kernel file, not a bootable one) and a
    //! context for running a step by hand.

    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use crate::steps::RunContext;

    pub fn write(root: &Path, vm_path: &str, bytes: &[u8]) {
        let path = root.join(vm_path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// A root tree `assemble_disk` accepts: a kernel file in `/boot` and a few others.
    pub fn small_tree(root: &Path) {
        write(root, "/boot/vmlinuz-6.1.0-99-amd64", &[0x4d, 0x5a, 1, 2, 3]);
        write(root, "/etc/hostname", b"small\n");
        write(root, "/etc/motd", b"a tree for tests\n");
    }

    /// A context whose output, scratch and log are under `dir`; what the step says is
    /// collected.
    pub fn context(
        dir: &Path,
        upstream: BTreeMap<String, PathBuf>,
        redact: Vec<String>,
    ) -> (RunContext, Arc<Mutex<Vec<String>>>) {
        let said = Arc::new(Mutex::new(Vec::new()));
        let lines = said.clone();
        for sub in ["out", "scratch", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let ctx = RunContext {
            out: dir.join("out"),
            scratch: dir.join("scratch"),
            log: dir.join("step.log"),
            upstream,
            recipe_dir: dir.to_path_buf(),
            cache: dir.join("cache"),
            redact: Arc::new(redact),
            cancel: tokio_util::sync::CancellationToken::new(),
            on_line: Arc::new(move |line: &str| lines.lock().unwrap().push(line.to_string())),
        };
        (ctx, said)
    }
}
