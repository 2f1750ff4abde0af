//! The Garage harness of the remote-store tests (`support::garage`) checked on its own, with
//! Debian's `rclone` as the S3 client: the bucket takes, lists and gives back an object with the
//! harness's key, the object's block is in the data folder, the server goes away on `stop()`, and
//! comes back with its data on `restart()`.

use std::process::{Command, Output};

use crate::support::garage::Garage;

#[track_caller]
fn ok(output: Output) -> Vec<u8> {
    assert!(
        output.status.success(),
        "rclone failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn garage_serves_a_bucket_with_its_key() {
    let Some(mut garage) = Garage::start() else {
        return;
    };
    if Command::new("rclone").arg("version").output().is_err() {
        assert!(
            std::env::var_os("VMBUILD_TEST_GARAGE").is_none_or(|v| v.is_empty() || v == "0"),
            "VMBUILD_TEST_GARAGE is set but there is no `rclone` (dev/setup installs it)"
        );
        eprintln!("skipped: no `rclone` (Debian's `rclone`; dev/setup installs it)");
        return;
    }
    assert!(garage.endpoint.starts_with("http://127.0.0.1:"));
    assert_eq!(garage.region, "garage");
    assert_eq!(
        garage.remote_url("runs/a"),
        format!(
            "s3://{}/runs/a?endpoint={}&region=garage",
            garage.bucket, garage.endpoint
        )
    );
    let env = garage.env();
    assert!(env.contains(&("AWS_ACCESS_KEY_ID".into(), garage.access_key_id.clone())));
    assert!(env.contains(&(
        "AWS_SECRET_ACCESS_KEY".into(),
        garage.secret_access_key.clone()
    )));
    assert!(env.contains(&("AWS_REGION".into(), "garage".into())));

    let dir = tempfile::tempdir().unwrap();
    // Larger than Garage's inline threshold (3 KiB), so that it is stored as a block.
    let bytes: Vec<u8> = (0..10_000u32).map(|_| rand::random::<u8>()).collect();
    let local = dir.path().join("object.bin");
    std::fs::write(&local, &bytes).unwrap();
    let object = format!("g:{}/harness/object.bin", garage.bucket);
    let folder = format!("g:{}/harness", garage.bucket);

    ok(garage.rclone(&["copyto", local.to_str().unwrap(), &object]));
    let listed = ok(garage.rclone(&["lsf", &folder]));
    assert_eq!(String::from_utf8_lossy(&listed), "object.bin\n");
    assert_eq!(ok(garage.rclone(&["cat", &object])), bytes);

    // The object's block, as it is, in the data folder.
    let block = walkdir::WalkDir::new(garage.data_dir())
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .any(|entry| std::fs::read(entry.path()).is_ok_and(|data| data == bytes));
    assert!(
        block,
        "no block with the object's bytes in {}",
        garage.data_dir().display()
    );

    garage.stop();
    garage.stop(); // idempotent
    let gone = garage.rclone(&["lsf", &folder]);
    assert!(
        !gone.status.success(),
        "rclone still lists with the server stopped"
    );

    garage.restart();
    let listed = ok(garage.rclone(&["lsf", &folder]));
    assert_eq!(String::from_utf8_lossy(&listed), "object.bin\n");
    assert_eq!(ok(garage.rclone(&["cat", &object])), bytes);
}
