//! Failures that must not pass as success: a missing input folder, an endpoint whose body
//! limit is below a photo's size, and a watched folder that disappears all end the run with a
//! non-zero status and a clear message instead of an empty success, a committed `too-large`
//! verdict, or retries forever.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bestiary_testkit::photos::write_class_folders;

fn bestiary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bestiary"));
    command.env("BESTIARY_LOG", "warn");
    command
}

#[test]
fn classifying_a_folder_that_does_not_exist_fails() {
    let out = tempfile::tempdir().unwrap();
    let missing = out.path().join("no-such-photos");
    let output = bestiary()
        .args([
            "classify",
            missing.to_str().unwrap(),
            "--engine",
            "tract",
            "--out",
        ])
        .arg(out.path().join("results"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert!(stderr.contains("no such folder"), "{stderr}");
}

#[test]
fn an_endpoint_refusing_a_photo_for_its_size_fails_the_run() {
    let photos = tempfile::tempdir().unwrap();
    write_class_folders(photos.path(), &["amber"], 2, (64, 64));
    // Noise does not compress: about 2.3 MB of PNG, over the server's 1 MiB body limit.
    let noise = image::RgbImage::from_fn(900, 900, |x, y| {
        let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(97);
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    noise.save(photos.path().join("amber/big.png")).unwrap();
    let mut server = bestiary()
        .args([
            "serve",
            "--engine",
            "tract",
            "--port",
            "0",
            "--max-body-mb",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = crate::classify::wait_until_serving(&mut server);
    let out = tempfile::tempdir().unwrap();
    let output = bestiary()
        .args(["classify", photos.path().to_str().unwrap(), "--out"])
        .arg(out.path())
        .args(["--endpoint", &address])
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert!(
        stderr.contains("413") && stderr.contains("--max-body-mb"),
        "{stderr}"
    );
}

#[test]
fn watch_ends_when_its_folder_is_gone() {
    let root = tempfile::tempdir().unwrap();
    let photos = root.path().join("incoming");
    write_class_folders(&photos, &["amber"], 1, (48, 48));
    let mut watch = bestiary()
        .args([
            "watch",
            photos.to_str().unwrap(),
            "--engine",
            "tract",
            "--interval",
            "0.2",
        ])
        .arg("--out")
        .arg(root.path().join("results"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::remove_dir_all(&photos).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            watch.kill().unwrap();
            panic!("watch kept retrying a folder that no longer exists");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(watch.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("no such folder"), "{stderr}");
}
