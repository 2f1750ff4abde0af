//! Tests of the store, on real folders in temporary directories.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::stat::Mode;
use tempfile::TempDir;

use super::*;

fn new_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A small tree with a bit of everything: files, a big file, a symlink, a fifo, a read-only
/// folder holding a read-only file, an empty folder.
fn make_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("a.txt"), "alpha\n").unwrap();
    fs::write(root.join("empty"), "").unwrap();
    fs::create_dir(root.join("etc")).unwrap();
    fs::write(root.join("etc/config"), "key = value\n").unwrap();
    chmod(&root.join("etc/config"), 0o600);
    // Over the mmap threshold.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(root.join("big.bin"), big).unwrap();
    symlink("etc/config", root.join("link")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    fs::create_dir(root.join("ro")).unwrap();
    fs::write(root.join("ro/file"), "read only").unwrap();
    chmod(&root.join("ro/file"), 0o444);
    chmod(&root.join("ro"), 0o555);
}

/// Make every folder under `root` writable again, so a test can change the tree.
fn unlock(root: &Path) {
    chmod(&root.join("ro"), 0o755);
}

fn ts(seconds: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_700_000_000 + seconds).unwrap()
}

fn record(ns: &str, step: &str, n: u32, output: Digest, finished: i64) -> ActionRecord {
    ActionRecord {
        key: Digest::of_canonical(&(ns, step, n)),
        namespace: ns.to_string(),
        step_id: step.to_string(),
        kind: "shell".to_string(),
        output,
        log: None,
        started: ts(finished - 1),
        finished: ts(finished),
        tools: BTreeMap::from([("bash".to_string(), "5.2".to_string())]),
        key_inputs: serde_json::json!({"n": n}),
    }
}

/// Commit a tree holding one file with `content`.
fn commit_small(store: &Store, content: &str) -> Digest {
    let staging = store.stage().unwrap();
    fs::write(staging.out.join("file"), content).unwrap();
    store.commit_tree(staging).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn open_creates_the_layout_and_refuses_another_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = Store::open(&root).unwrap();
    for sub in LAYOUT_DIRS {
        assert!(root.join(sub).is_dir(), "{sub}");
    }
    assert_eq!(
        fs::read_to_string(root.join("VERSION")).unwrap().trim(),
        "1"
    );
    assert_eq!(store.root(), root);
    // Opening again is fine.
    Store::open(&root).unwrap();
    fs::write(root.join("VERSION"), "2\n").unwrap();
    match Store::open(&root) {
        Err(StoreError::Version {
            found, expected, ..
        }) => {
            assert_eq!(found, "2");
            assert_eq!(expected, "1");
        }
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[test]
fn default_location_and_namespace() {
    assert!(Store::default_location().ends_with("vmbuild"));
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("site.hcl");
    fs::write(&recipe, "").unwrap();
    let ns = Store::namespace(&recipe);
    assert_eq!(ns.len(), 16);
    assert!(ns.chars().all(|c| c.is_ascii_hexdigit()));
    // The same file through another spelling of its path.
    let other_spelling = dir.path().join(".").join("site.hcl");
    assert_eq!(Store::namespace(&other_spelling), ns);
    assert_ne!(Store::namespace(&dir.path().join("other.hcl")), ns);
    // A path that does not exist still gets a stable name.
    let missing = Path::new("/no/such/recipe.hcl");
    assert_eq!(Store::namespace(missing), Store::namespace(missing));
}

#[test]
fn digest_is_stable_across_identical_trees() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    make_tree(&a);
    make_tree(&b);
    // Times differ, and so does the top folder's own mode: neither counts.
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(b.join("a.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    chmod(&b, 0o700);
    let da = tree_digest(&a).unwrap();
    assert_eq!(da, tree_digest(&b).unwrap());
    assert_eq!(da, tree_digest(&a).unwrap());
    // An empty tree has a digest too, different from a tree with one empty folder.
    let e1 = dir.path().join("e1");
    let e2 = dir.path().join("e2");
    fs::create_dir(&e1).unwrap();
    fs::create_dir_all(e2.join("x")).unwrap();
    assert_ne!(tree_digest(&e1).unwrap(), tree_digest(&e2).unwrap());
    // Not a folder: an error naming the path.
    match tree_digest(&a.join("a.txt")) {
        Err(StoreError::Io { path, .. }) => assert_eq!(path, a.join("a.txt")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn digest_changes_with_every_hashed_property() {
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    make_tree(&base_dir);
    let base = tree_digest(&base_dir).unwrap();

    let variant = |name: &str, change: &dyn Fn(&Path)| {
        let root = dir.path().join(name);
        make_tree(&root);
        change(&root);
        let digest = tree_digest(&root).unwrap();
        assert_ne!(digest, base, "changing the {name} must change the digest");
        digest
    };
    variant("content", &|r| {
        fs::write(r.join("a.txt"), "alphA\n").unwrap()
    });
    variant("big-content", &|r| {
        let mut big = fs::read(r.join("big.bin")).unwrap();
        big[2_500_000] ^= 1;
        fs::write(r.join("big.bin"), big).unwrap();
    });
    variant("mode", &|r| chmod(&r.join("a.txt"), 0o755));
    variant("setuid", &|r| chmod(&r.join("etc/config"), 0o4600));
    variant("dir-mode", &|r| chmod(&r.join("etc"), 0o700));
    variant("symlink-target", &|r| {
        fs::remove_file(r.join("link")).unwrap();
        symlink("etc/other", r.join("link")).unwrap();
    });
    variant("file-name", &|r| {
        fs::rename(r.join("a.txt"), r.join("b.txt")).unwrap();
    });
    variant("type", &|r| {
        fs::remove_file(r.join("fifo")).unwrap();
        fs::write(r.join("fifo"), "").unwrap();
        chmod(&r.join("fifo"), 0o644);
    });
    variant("moved-between-folders", &|r| {
        fs::rename(r.join("etc/config"), r.join("config")).unwrap();
    });
    if nix::unistd::geteuid().is_root() {
        variant("owner", &|r| {
            std::os::unix::fs::lchown(r.join("a.txt"), Some(1234), None).unwrap();
        });
    } else {
        println!("note: not root, the owner change is not tested");
    }

    // Extended attributes, where the file system takes `user.` ones.
    let root = dir.path().join("xattr");
    make_tree(&root);
    match xattr::set(root.join("a.txt"), "user.vmbuild.test", b"1") {
        Ok(()) => {
            let one = tree_digest(&root).unwrap();
            assert_ne!(one, base, "adding an xattr must change the digest");
            xattr::set(root.join("a.txt"), "user.vmbuild.test", b"2").unwrap();
            let two = tree_digest(&root).unwrap();
            assert_ne!(two, one, "changing an xattr value must change the digest");
            xattr::remove(root.join("a.txt"), "user.vmbuild.test").unwrap();
            assert_eq!(tree_digest(&root).unwrap(), base);
        }
        Err(e) => println!("note: the file system rejects user xattrs ({e}); not tested"),
    }
}

#[test]
fn device_nodes_are_hashed_by_number_and_removed() {
    use nix::sys::stat::{makedev, mknod, SFlag};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let mode = Mode::from_bits_truncate(0o666);
    if let Err(e) = mknod(&a.join("null"), SFlag::S_IFCHR, mode, makedev(1, 3)) {
        println!("note: cannot make device nodes here ({e}); not tested");
        return;
    }
    mknod(&b.join("null"), SFlag::S_IFCHR, mode, makedev(1, 5)).unwrap();
    assert_ne!(tree_digest(&a).unwrap(), tree_digest(&b).unwrap());
    chmod(&a, 0o555);
    assert_eq!(tree::remove_all(&a).unwrap(), 0);
    assert!(!a.exists());
}

#[test]
fn commit_moves_the_tree_and_dedupes() {
    let (_dir, store) = new_store();
    let staging = store.stage().unwrap();
    assert!(staging.out.is_dir() && staging.scratch.is_dir() && !staging.log.exists());
    make_tree(&staging.out);
    fs::write(staging.scratch.join("junk"), "scratch").unwrap();
    fs::write(&staging.log, "the log\n").unwrap();
    let (out, dir, scratch) = (
        staging.out.clone(),
        staging.dir.clone(),
        staging.scratch.clone(),
    );
    let digest = store.commit_tree(staging).unwrap();
    assert!(store.has_tree(&digest));
    assert_eq!(tree_digest(&store.tree_path(&digest)).unwrap(), digest);
    // The whole staging area, log included, is gone.
    assert!(!out.exists() && !scratch.exists() && !dir.exists());

    // The same content again: the same digest, one tree, the duplicate discarded.
    let again = store.stage().unwrap();
    make_tree(&again.out);
    let (out2, dir2) = (again.out.clone(), again.dir.clone());
    assert_eq!(store.commit_tree(again).unwrap(), digest);
    assert!(!out2.exists() && !dir2.exists());
    assert_eq!(names(&store.root().join("trees")), vec![digest.to_hex()]);
    assert_eq!(
        fs::read_to_string(store.tree_path(&digest).join("ro/file")).unwrap(),
        "read only"
    );

    // A read-only top folder commits too, and keeps its mode.
    let ro = store.stage().unwrap();
    fs::write(ro.out.join("x"), "x").unwrap();
    chmod(&ro.out, 0o555);
    let d = store.commit_tree(ro).unwrap();
    let mode = fs::metadata(store.tree_path(&d))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o555);
}

#[test]
fn staging_dropped_without_commit_leaves_nothing() {
    let (_dir, store) = new_store();
    let staging = store.stage().unwrap();
    make_tree(&staging.out);
    fs::write(&staging.log, "log").unwrap();
    fs::write(staging.scratch.join("t"), "t").unwrap();
    chmod(&staging.out, 0o555);
    drop(staging);
    assert!(names(&store.root().join("tmp")).is_empty());

    // A commit that fails (the output is not a folder) also cleans up.
    let staging = store.stage().unwrap();
    fs::remove_dir(&staging.out).unwrap();
    fs::write(&staging.out, "not a folder").unwrap();
    assert!(store.commit_tree(staging).is_err());
    assert!(names(&store.root().join("tmp")).is_empty());
}

#[test]
fn blobs_round_trip() {
    let (_dir, store) = new_store();
    let d = store.put_blob(b"hello").unwrap();
    assert_eq!(d, Digest::of_bytes(b"hello"));
    assert_eq!(store.put_blob(b"hello").unwrap(), d);
    assert_eq!(store.get_blob(&d).unwrap().unwrap(), b"hello");
    assert_eq!(store.get_blob(&Digest::of_bytes(b"nope")).unwrap(), None);
    // No temporary file is left behind.
    assert!(names(&store.root().join("tmp")).is_empty());
}

#[test]
fn records_are_trusted_only_with_their_tree() {
    let (_dir, store) = new_store();
    let tree = commit_small(&store, "one");
    let rec = record("ns", "step.build", 1, tree, 10);
    assert_eq!(store.get_action(&rec.key).unwrap(), None);
    store.put_action(&rec).unwrap();
    let hex = rec.key.to_hex();
    let path = store
        .root()
        .join("actions")
        .join(&hex[..2])
        .join(format!("{hex}.json"));
    assert!(path.is_file());
    assert_eq!(store.get_action(&rec.key).unwrap(), Some(rec.clone()));
    assert_eq!(store.list_actions().unwrap(), vec![rec.clone()]);

    tree::remove_all(&store.tree_path(&tree)).unwrap();
    assert_eq!(store.get_action(&rec.key).unwrap(), None);
    // Still listed: list_actions walks every record.
    assert_eq!(store.list_actions().unwrap().len(), 1);

    fs::write(&path, "{ not json").unwrap();
    match store.get_action(&rec.key) {
        Err(StoreError::CorruptRecord { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected a corrupt record error, got {other:?}"),
    }
}

#[test]
fn refs_and_logs() {
    let (_dir, store) = new_store();
    let tree = commit_small(&store, "one");
    let first = record("0123456789abcdef", "database.toxo.dump", 1, tree, 10);
    let second = record("0123456789abcdef", "database.toxo.dump", 2, tree, 20);
    assert_eq!(
        store.get_ref(&first.namespace, &first.step_id).unwrap(),
        None
    );
    store.put_ref(&first).unwrap();
    store.put_ref(&second).unwrap();
    assert_eq!(
        store.get_ref(&first.namespace, &first.step_id).unwrap(),
        Some(second.clone())
    );
    assert!(store
        .root()
        .join("refs/0123456789abcdef/database.toxo.dump.json")
        .is_file());
    let log = store.log_path("0123456789abcdef", "step.build");
    assert_eq!(
        log,
        store.root().join("logs/0123456789abcdef/step.build.log")
    );
    assert!(log.parent().unwrap().is_dir());
}

#[test]
fn verify_finds_tampering_and_repair_removes_it() {
    let (_dir, store) = new_store();
    let staging = store.stage().unwrap();
    make_tree(&staging.out);
    let tree = store.commit_tree(staging).unwrap();
    let good_tree = commit_small(&store, "good");
    let blob = store.put_blob(b"log of step").unwrap();
    let good_blob = store.put_blob(b"another log").unwrap();
    let mut bad = record("ns", "step.a", 1, tree, 10);
    bad.log = Some(good_blob);
    let mut bad_log = record("ns", "step.b", 1, good_tree, 10);
    bad_log.log = Some(blob);
    let mut good = record("ns", "step.c", 1, good_tree, 10);
    good.log = Some(good_blob);
    for r in [&bad, &bad_log, &good] {
        store.put_action(r).unwrap();
    }
    assert!(store.verify(false).unwrap().problems.is_empty());

    // Tamper: a file inside a committed (read-only) tree, a blob, and a stray file in trees/.
    let tree_path = store.tree_path(&tree);
    unlock(&tree_path);
    chmod(&tree_path.join("ro/file"), 0o644);
    fs::write(tree_path.join("ro/file"), "changed").unwrap();
    chmod(&tree_path.join("ro/file"), 0o444);
    chmod(&tree_path.join("ro"), 0o555);
    fs::write(store.blob_path(&blob), "tampered").unwrap();
    let stray = store.root().join("trees/not-a-digest");
    fs::write(&stray, "").unwrap();

    let report = store.verify(false).unwrap();
    assert_eq!((report.trees, report.blobs, report.records), (2, 2, 3));
    let flagged: BTreeSet<PathBuf> = report.problems.iter().map(|p| p.path.clone()).collect();
    let hex = |k: &Digest| {
        let h = k.to_hex();
        store
            .root()
            .join("actions")
            .join(&h[..2])
            .join(format!("{h}.json"))
    };
    let expected: BTreeSet<PathBuf> = [
        tree_path.clone(),
        store.blob_path(&blob),
        stray.clone(),
        hex(&bad.key),
        hex(&bad_log.key),
    ]
    .into_iter()
    .collect();
    assert_eq!(flagged, expected, "{:#?}", report.problems);
    // Without repair nothing moved.
    assert!(tree_path.exists() && stray.exists());

    let report = store.verify(true).unwrap();
    assert_eq!(report.problems.len(), 5);
    assert!(!tree_path.exists() && !store.blob_path(&blob).exists() && !stray.exists());
    assert!(!hex(&bad.key).exists() && !hex(&bad_log.key).exists());
    assert_eq!(store.get_action(&good.key).unwrap(), Some(good.clone()));
    let report = store.verify(false).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!((report.trees, report.blobs, report.records), (1, 1, 1));
}

#[test]
fn gc_keeps_what_is_named_and_recent() {
    let (_dir, store) = new_store();
    // Five runs of one step, each with its own tree and log.
    let mut runs = Vec::new();
    for n in 0..5 {
        let tree = commit_small(&store, &format!("run {n}"));
        let mut r = record("ns", "step.build", n, tree, i64::from(n) * 10);
        r.log = Some(store.put_blob(format!("log {n}").as_bytes()).unwrap());
        store.put_action(&r).unwrap();
        runs.push(r);
    }
    // Another step of another recipe, one run (kept by keep_last), named by a ref.
    let other = record(
        "other",
        "source.website",
        0,
        commit_small(&store, "other"),
        0,
    );
    store.put_action(&other).unwrap();
    store.put_ref(&other).unwrap();
    // A ref whose record is gone.
    let ghost = record("ns", "ghost", 0, runs[0].output, 0);
    store.put_ref(&ghost).unwrap();
    // Orphans: a tree and a blob nobody names, a staging area, a corrupt record, a free lock.
    let orphan_tree = commit_small(&store, "orphan");
    let orphan_blob = store.put_blob(b"orphan").unwrap();
    let stale = store.stage().unwrap();
    make_tree(&stale.out);
    let stale_dir = stale.dir.clone();
    std::mem::forget(stale); // as if its process had been killed
    let corrupt = store.root().join("actions/ff/ff.json");
    fs::create_dir_all(corrupt.parent().unwrap()).unwrap();
    fs::write(&corrupt, "{").unwrap();
    drop(store.lock_key(&runs[0].key).unwrap());
    let held_key = Digest::of_bytes(b"held");
    let held = store.lock_key(&held_key).unwrap();

    let keep: BTreeSet<Digest> = [runs[0].key].into_iter().collect();
    match store.gc(&keep, 2) {
        Err(StoreError::GcWithoutLock { .. }) => {}
        other => panic!("gc without the lock must refuse, got {other:?}"),
    }
    let report = {
        let _lock = store.lock_exclusive().unwrap();
        store.gc(&keep, 2).unwrap()
    };

    let kept_keys: BTreeSet<Digest> = store
        .list_actions()
        .unwrap()
        .iter()
        .map(|r| r.key)
        .collect();
    let expected: BTreeSet<Digest> = [runs[0].key, runs[3].key, runs[4].key, other.key]
        .into_iter()
        .collect();
    assert_eq!(kept_keys, expected);
    assert_eq!(report.records_kept, 4);
    assert_eq!(report.records_removed, 3); // runs 1 and 2, and the corrupt one
    assert_eq!(report.trees_removed, 3); // runs 1 and 2, and the orphan
    assert_eq!(report.blobs_removed, 3);
    assert!(report.bytes_freed > 0);
    for r in [&runs[0], &runs[3], &runs[4], &other] {
        assert!(store.get_action(&r.key).unwrap().is_some());
        assert!(store
            .get_blob(&r.log.unwrap_or(Digest::of_bytes(b"")))
            .is_ok());
    }
    for r in [&runs[1], &runs[2]] {
        assert!(!store.has_tree(&r.output));
        assert_eq!(store.get_blob(&r.log.unwrap()).unwrap(), None);
    }
    assert!(store.get_blob(&runs[4].log.unwrap()).unwrap().is_some());
    assert!(!store.has_tree(&orphan_tree));
    assert_eq!(store.get_blob(&orphan_blob).unwrap(), None);
    assert!(!stale_dir.exists());
    assert!(names(&store.root().join("tmp")).is_empty());
    assert!(!corrupt.exists());
    assert_eq!(
        store.get_ref("other", "source.website").unwrap(),
        Some(other)
    );
    // Refs stay, even when their record is gone: they explain the next miss.
    assert_eq!(store.get_ref("ns", "ghost").unwrap(), Some(ghost));
    // The free lock file went; the held one stayed.
    assert_eq!(
        names(&store.root().join("locks")),
        vec![format!("{}.lock", held_key.to_hex())]
    );
    drop(held);
    assert!(store.verify(false).unwrap().problems.is_empty());
}

#[test]
fn lock_key_blocks_until_the_holder_drops_it() {
    let (_dir, store) = new_store();
    let key = Digest::of_bytes(b"key");
    let first = store.lock_key(&key).unwrap();
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let store = store.clone();
        std::thread::spawn(move || {
            tx.send("waiting").unwrap();
            let lock = store.lock_key(&key).unwrap();
            tx.send("acquired").unwrap();
            drop(lock);
        })
    };
    assert_eq!(rx.recv().unwrap(), "waiting");
    // While the first lock is held, the waiter cannot get it.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    // Another key is free meanwhile.
    drop(store.lock_key(&Digest::of_bytes(b"other")).unwrap());
    drop(first);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "acquired"
    );
    waiter.join().unwrap();
}

#[test]
fn store_lock_shared_and_exclusive() {
    let (_dir, store) = new_store();
    let a = store.lock_shared().unwrap();
    let b = store.lock_shared().unwrap();
    assert!(!store.exclusive_lock_held().unwrap());
    let (tx, rx) = mpsc::channel();
    let gc = {
        let store = store.clone();
        std::thread::spawn(move || {
            let lock = store.lock_exclusive().unwrap();
            tx.send(()).unwrap();
            drop(lock);
        })
    };
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    drop(a);
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    drop(b);
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    gc.join().unwrap();
    let ex = store.lock_exclusive().unwrap();
    assert!(store.exclusive_lock_held().unwrap());
    drop(ex);
}

/// Run by `sigkill_never_leaves_a_partial_object` in a child process: commit trees and records
/// in a loop until killed.
#[test]
#[ignore = "a helper run by another test in a child process"]
fn crash_child() {
    let Some(root) = std::env::var_os("VMBUILD_STORE_CRASH_ROOT") else {
        return;
    };
    let store = Store::open(Path::new(&root)).unwrap();
    // Each round starts its numbers apart, so every round's commits are new trees.
    let start: u32 = std::env::var("VMBUILD_STORE_CRASH_ROUND")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
        * 100_000;
    for n in start.. {
        let staging = store.stage().unwrap();
        for f in 0..50 {
            let content = format!("{n} {f} ").repeat(1 + (f as usize) * 200);
            fs::write(staging.out.join(format!("f{f}")), content).unwrap();
        }
        fs::create_dir(staging.out.join("ro")).unwrap();
        chmod(&staging.out.join("ro"), 0o555);
        let tree = store.commit_tree(staging).unwrap();
        let mut r = record("crash", "step", n, tree, i64::from(n));
        r.log = Some(store.put_blob(format!("log {n}").as_bytes()).unwrap());
        store.put_action(&r).unwrap();
        store.put_ref(&r).unwrap();
        println!("committed");
    }
}

#[test]
fn sigkill_never_leaves_a_partial_object() {
    use std::io::BufRead;
    let (_dir, store) = new_store();
    let exe = std::env::current_exe().unwrap();
    for round in 0..6u64 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "store::tests::crash_child",
                "--ignored",
                "--nocapture",
            ])
            .env("VMBUILD_STORE_CRASH_ROOT", store.root())
            .env("VMBUILD_STORE_CRASH_ROUND", round.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // Wait for a first commit, then kill it somewhere in the middle of later ones.
        loop {
            let line = lines.next().expect("the child commits").unwrap();
            if line == "committed" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(7 + round * 13));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let report = store.verify(false).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert!(report.trees >= 6 && report.records >= 6);
    let _lock = store.lock_exclusive().unwrap();
    store.gc(&BTreeSet::new(), 1).unwrap();
    assert!(names(&store.root().join("tmp")).is_empty());
    assert!(store.verify(false).unwrap().problems.is_empty());
}

#[test]
fn the_secret_key_is_made_once_private_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = store.secret_key().unwrap();
    assert_eq!(store.secret_key().unwrap(), key);
    assert_eq!(Store::open(dir.path()).unwrap().secret_key().unwrap(), key);
    let mode = std::fs::metadata(dir.path().join("secret.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(store.verify(false).unwrap().problems.is_empty());
}

#[test]
fn a_new_store_is_its_owners_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("new-store");
    Store::open(&root).unwrap();
    let mode = std::fs::metadata(&root).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}
