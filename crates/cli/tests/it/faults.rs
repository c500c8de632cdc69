//! Faults injected into real processes: the S3 server (SeaweedFS) killed under `classify` and
//! `watch` and brought back, a store that accepts connections and never answers, `kill -9` of
//! a training run, and a disk that refuses writes. Each ends in a clean error or a finished job,
//! never a hang, a lost photo or a photo counted twice.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bestiary_storage::Store;
use bestiary_testkit::SeaweedFs;
use bestiary_testkit::photos::{upload_dir, write_class_folders};

use crate::classify::{bestiary, markers, merged_keys, merged_keys_with, succeeded, upload_photos};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn committed(runtime: &tokio::runtime::Runtime, out: &Store) -> u64 {
    runtime.block_on(markers(out)).iter().sum()
}

/// Waits until `out` holds `count` committed results, failing when `child` ends first or
/// `limit` passes without them.
fn wait_for_commits(
    runtime: &tokio::runtime::Runtime,
    out: &Store,
    count: u64,
    child: &mut Child,
    limit: Duration,
) {
    let started = Instant::now();
    while committed(runtime, out) < count {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before {count} results"
        );
        assert!(started.elapsed() < limit, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit, at most `limit`; kills it and fails the test after that.
fn wait_at_most(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// The built-in model on one tract thread, in parts of five: slow enough to be caught halfway.
fn slow_classify_args(input: &str, out: &str, retries: &str, retry_timeout: &str) -> Vec<String> {
    [
        "classify",
        input,
        "--out",
        out,
        "--engine",
        "tract",
        "--threads",
        "1",
        "--decode-threads",
        "1",
        "--batch-size",
        "2",
        "--concurrency",
        "2",
        "--part-size",
        "5",
        "--storage-retries",
        retries,
        "--storage-retry-timeout",
        retry_timeout,
        "--storage-timeout",
        "2",
        "--json",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn classify_fails_cleanly_while_s3_is_down_and_rides_out_a_short_outage() {
    let runtime = runtime();
    let mut weed = SeaweedFs::start("faults").unwrap();
    let env = weed.env.clone();
    let prefix = "classify";
    let photos = runtime.block_on(upload_photos(&env, prefix, 40)) as u64;
    let input = env.url(&format!("{prefix}/in"));
    let out = env.url(&format!("{prefix}/out"));
    let out_store = env.store(&format!("{prefix}/out"));

    // S3 goes away and stays away: few retries, then a clean failure, not a hang or a success.
    let mut first = bestiary(&env)
        .args(slow_classify_args(&input, &out, "2", "5"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_commits(
        &runtime,
        &out_store,
        10,
        &mut first,
        Duration::from_secs(300),
    );
    weed.kill();
    let killed = Instant::now();
    let status = wait_at_most(&mut first, Duration::from_secs(120), "classify without S3");
    let stderr = stderr_of(&mut first);
    println!(
        "S3 down: classify exited {status} after {:.1} s: {}",
        killed.elapsed().as_secs_f64(),
        stderr.trim()
    );
    assert!(!status.success(), "a run whose store vanished succeeded");
    assert!(!stderr.trim().is_empty(), "no error message");

    weed.restart().unwrap();
    let before = committed(&runtime, &out_store);
    assert!(
        before > 0 && before < photos,
        "{before} of {photos} committed"
    );

    // The rerun continues; S3 disappears for a few seconds under it, and it retries through.
    let mut second = bestiary(&env)
        .args(slow_classify_args(&input, &out, "1000", "90"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_commits(
        &runtime,
        &out_store,
        before + 10,
        &mut second,
        Duration::from_secs(300),
    );
    weed.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(second.try_wait().unwrap().is_none(), "gave up within 3 s");
    weed.restart().unwrap();
    let status = wait_at_most(
        &mut second,
        Duration::from_secs(300),
        "classify after S3 came back",
    );
    let mut report = String::new();
    second
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    let stderr = stderr_of(&mut second);
    assert!(
        status.success(),
        "the run did not ride out the outage: {stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report["all_runs"]["records"].as_u64(),
        Some(photos),
        "{report}"
    );

    let (summary, keys) = merged_keys(&env, &out);
    assert_eq!(summary["runs"][0]["complete"], true, "{summary}");
    assert_eq!(keys.len() as u64, photos, "one result per photo");
    assert_eq!(
        keys.iter().collect::<HashSet<_>>().len() as u64,
        photos,
        "no key twice"
    );
}

#[test]
fn watch_waits_out_an_s3_outage_and_misses_nothing_that_arrived() {
    let runtime = runtime();
    let mut weed = SeaweedFs::start("faults").unwrap();
    let env = weed.env.clone();
    let prefix = "watch";
    let first_photos = runtime.block_on(upload_photos(&env, prefix, 2)) as u64;
    let out = env.url(&format!("{prefix}/out"));
    let out_store = env.store(&format!("{prefix}/out"));
    let mut watch = bestiary(&env)
        .args(["watch", &env.url(&format!("{prefix}/in")), "--out", &out])
        .args(["--engine", "tract", "--interval", "0.5", "--part-size", "5"])
        .args(["--storage-retries", "2", "--storage-timeout", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_commits(
        &runtime,
        &out_store,
        first_photos,
        &mut watch,
        Duration::from_secs(180),
    );

    // Down for longer than its retries last: an outage is not a reason for watch to stop.
    weed.kill();
    std::thread::sleep(Duration::from_secs(8));
    if watch.try_wait().unwrap().is_some() {
        panic!("watch gave up on an outage: {}", stderr_of(&mut watch));
    }
    weed.restart().unwrap();
    let later = tempfile::tempdir().unwrap();
    // Keys after every key seen, as new uploads usually are (earlier keys wait for the next
    // full rescan, --rescan-interval).
    write_class_folders(later.path(), &["wolf", "zebra"], 3, (96, 72));
    let store = env.store(&format!("{prefix}/in"));
    let later_photos = runtime.block_on(upload_dir(later.path(), &store)) as u64;
    wait_for_commits(
        &runtime,
        &out_store,
        first_photos + later_photos,
        &mut watch,
        Duration::from_secs(180),
    );
    watch.kill().unwrap();
    watch.wait().unwrap();

    // A watch never finishes its shard, so --merge says "incomplete" (exit 2) and merges.
    let merged = tempfile::tempdir().unwrap();
    let target = merged.path().join("all.jsonl");
    let status = bestiary(&env)
        .args(["classify", "--merge", &out, "--json", "--merge-to"])
        .arg(&target)
        .output()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(2), "{status}");
    let keys: Vec<String> = std::fs::read_to_string(&target)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["key"].to_string())
        .collect();
    assert_eq!(keys.len() as u64, first_photos + later_photos, "{keys:?}");
    assert_eq!(
        keys.iter().collect::<HashSet<_>>().len(),
        keys.len(),
        "no key twice"
    );
}

/// A TCP server that accepts connections and never answers, as an overloaded or half-dead S3
/// endpoint does; returns its URL. Connections stay open until the test process ends.
fn stalled_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in listener.incoming().flatten() {
            held.push(connection);
        }
    });
    url
}

fn stalled_env(command: &mut Command, endpoint: &str) {
    command
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "stalled")
        .env("AWS_SECRET_ACCESS_KEY", "stalled")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("BESTIARY_LOG", "warn");
}

/// A raw HTTP/1.1 request (the test needs no client library); returns the status code.
fn http_status(address: &str, request: &[u8], limit: Duration) -> u16 {
    let address = address.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(request).unwrap();
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).expect("no answer in time");
        assert!(read > 0, "connection closed without an answer");
        reply.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&reply);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_store_that_stops_answering_times_out_and_serve_still_answers_photos() {
    let endpoint = stalled_endpoint();
    let out = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_bestiary"));
    stalled_env(&mut command, &endpoint);
    let mut classify = command
        .args(["classify", "s3://stalled/in", "--engine", "tract", "--out"])
        .arg(out.path())
        .args(["--storage-timeout", "1", "--storage-retries", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Two attempts of 1 s and a backoff: far below the limit, which only catches a hang.
    let status = wait_at_most(
        &mut classify,
        Duration::from_secs(60),
        "classify on a stalled store",
    );
    let stderr = stderr_of(&mut classify);
    println!(
        "stalled store: classify exited {status} after {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        stderr.trim()
    );
    assert!(!status.success());
    assert!(
        stderr.to_lowercase().contains("timed out") || stderr.contains("timeout"),
        "{stderr}"
    );

    let mut command = Command::new(env!("CARGO_BIN_EXE_bestiary"));
    stalled_env(&mut command, &endpoint);
    let mut server = command
        .args([
            "serve",
            "--engine",
            "tract",
            "--port",
            "0",
            "--bucket",
            "s3://stalled",
        ])
        .args(["--storage-timeout", "1", "--storage-retries", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = crate::classify::wait_until_serving(&mut server);
    // A request that reads from the stalled bucket, left waiting in the background…
    let uris = br#"{"uris": ["in/cat.jpg"]}"#;
    let mut request = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        uris.len()
    )
    .into_bytes();
    request.extend_from_slice(uris);
    let background_address = address.clone();
    let waiting = std::thread::spawn(move || {
        let started = Instant::now();
        let status = http_status(&background_address, &request, Duration::from_secs(60));
        (status, started.elapsed())
    });
    // …while a photo in the body is answered.
    let photo = bestiary_testkit::photos::encode(
        &bestiary_testkit::photos::photo(0, 1, 96, 80),
        image::ImageFormat::Jpeg,
    );
    let mut request = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        photo.len()
    )
    .into_bytes();
    request.extend_from_slice(&photo);
    assert_eq!(
        http_status(&address, &request, Duration::from_secs(30)),
        200
    );
    let (status, took) = waiting.join().unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    println!("stalled bucket: a uris request answered {status} after {took:?}");
    assert!(status >= 500, "{status}");
}

/// Photos for training runs small enough for a test: 3 classes × 16 photos of 48 px.
fn training_photos(dir: &Path) {
    write_class_folders(dir, &["amber", "teal", "violet"], 16, (48, 48));
}

fn train_command(data: &Path, out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bestiary"));
    command
        .env("BESTIARY_LOG", "warn")
        .args([
            "train", "--name", "m", "--arch", "seed-cnn", "--epochs", "3",
        ])
        .args([
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--width",
            "8",
            "--seed",
            "7",
        ])
        .args(["--quiet", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out);
    command
}

/// The trained version's weights (the only version under `<out>/m`).
fn trained_weights(out: &Path) -> Vec<u8> {
    let versions: Vec<_> = std::fs::read_dir(out.join("m"))
        .unwrap()
        .flatten()
        .filter(|entry| entry.path().join("weights.safetensors").exists())
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    std::fs::read(versions[0].path().join("weights.safetensors")).unwrap()
}

/// A safetensors file's tensor table (names, shapes, offsets) and its data, bit for bit. The
/// header's `__metadata__` map is left out: burn writes it in hash-map order, so two identical
/// runs' files differ there and nowhere else.
fn safetensors_parts(bytes: &[u8]) -> (serde_json::Value, &[u8]) {
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    header.as_object_mut().unwrap().remove("__metadata__");
    (header, &bytes[8 + length..])
}

fn epochs_done(out: &Path) -> Option<u64> {
    let bytes = std::fs::read(out.join("m/training/state.json")).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["epochs_done"].as_u64()
}

#[test]
fn train_killed_mid_epoch_resumes_to_the_same_weights() {
    let data = tempfile::tempdir().unwrap();
    training_photos(data.path());
    let whole = tempfile::tempdir().unwrap();
    let started = Instant::now();
    succeeded(train_command(data.path(), whole.path()).output().unwrap());
    let epoch = started.elapsed() / 3;

    let killed = tempfile::tempdir().unwrap();
    let mut run = train_command(data.path(), killed.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while epochs_done(killed.path()) != Some(1) {
        assert!(run.try_wait().unwrap().is_none(), "ended before the kill");
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Halfway through the second epoch (the first one's length, measured above, less what
    // loading took, is an upper bound).
    std::thread::sleep(epoch / 3);
    assert!(run.try_wait().unwrap().is_none(), "ended before the kill");
    run.kill().unwrap(); // SIGKILL
    run.wait().unwrap();
    assert_eq!(
        epochs_done(killed.path()),
        Some(1),
        "the kill missed the second epoch"
    );

    succeeded(
        train_command(data.path(), killed.path())
            .arg("--resume")
            .output()
            .unwrap(),
    );
    let (expected, resumed) = (
        trained_weights(whole.path()),
        trained_weights(killed.path()),
    );
    let (expected_tensors, expected_data) = safetensors_parts(&expected);
    let (resumed_tensors, resumed_data) = safetensors_parts(&resumed);
    assert_eq!(expected_tensors, resumed_tensors, "other tensors");
    assert!(
        expected_data == resumed_data,
        "resumed weights differ from an uninterrupted run's"
    );
}

/// Runs `command` with writes limited to files of `bytes` (RLIMIT_FSIZE, SIGXFSZ ignored): each
/// write past it fails with EFBIG, as a full disk fails a write with ENOSPC, without needing
/// the privileges to mount a small file system.
fn with_file_size_limit(command: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: setrlimit and signal are async-signal-safe; they change only the child.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        })
    }
}

#[test]
fn a_disk_that_refuses_writes_fails_the_run_and_commits_nothing_incomplete() {
    let photos = tempfile::tempdir().unwrap();
    write_class_folders(photos.path(), &["amber", "teal"], 6, (64, 48));
    let out = tempfile::tempdir().unwrap();
    let results = out.path().join("results");
    let classify = |limit: Option<u64>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bestiary"));
        command
            .env("BESTIARY_LOG", "warn")
            .args([
                "classify",
                photos.path().to_str().unwrap(),
                "--engine",
                "tract",
            ])
            .args(["--part-size", "4", "--json", "--out"])
            .arg(&results);
        if let Some(bytes) = limit {
            with_file_size_limit(&mut command, bytes);
        }
        command.output().unwrap()
    };
    // A part of four results is over 1 kB: the first part cannot be written whole.
    let full = classify(Some(600));
    let stderr = String::from_utf8_lossy(&full.stderr);
    println!(
        "disk full: classify exited {}: {}",
        full.status,
        stderr.trim()
    );
    assert!(!full.status.success(), "succeeded on a full disk");
    assert!(
        stderr.contains("too large") || stderr.contains("File too large"),
        "{stderr}"
    );
    // Nothing half-written counts as done: no completion marker, and the rerun does it all.
    let done = walk(&results)
        .into_iter()
        .filter(|path| path.contains("/progress/"))
        .count();
    assert_eq!(
        done, 0,
        "a marker was committed for a part that could not be written"
    );
    let report: serde_json::Value = serde_json::from_str(&succeeded(classify(None))).unwrap();
    assert_eq!(report["all_runs"]["records"].as_u64(), Some(12), "{report}");
    let (_, keys) = merged_keys_with(
        Command::new(env!("CARGO_BIN_EXE_bestiary")),
        results.to_str().unwrap(),
    );
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 12);

    // Training: the first checkpoint cannot be written, and the run says so.
    let data = tempfile::tempdir().unwrap();
    training_photos(data.path());
    let models = tempfile::tempdir().unwrap();
    let mut train = train_command(data.path(), models.path());
    let output = with_file_size_limit(&mut train, 4096).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "disk full: train exited {}: {}",
        output.status,
        stderr.trim()
    );
    assert!(
        !output.status.success(),
        "training succeeded on a full disk"
    );
    assert!(
        stderr.contains("checkpoint") || stderr.contains("too large"),
        "{stderr}"
    );
    assert_eq!(
        epochs_done(models.path()),
        None,
        "a checkpoint state names weights never written"
    );
}

/// Every file below `dir`, as `/`-separated paths.
fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    files
}
