//! `bestiary classify` as a process against a real S3 server (SeaweedFS): killed with SIGKILL
//! halfway and rerun, every photo has exactly one result; and photos sent to a running
//! `bestiary serve` with `--endpoint`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bestiary_storage::Store;
use bestiary_testkit::photos::{truncated_jpeg, upload_dir, write_class_folders};
use bestiary_testkit::{S3Env, s3, unique_prefix};
use futures::TryStreamExt;

pub(crate) fn bestiary(env: &S3Env) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bestiary"));
    command
        .env_remove("AWS_ENDPOINT_URL")
        .env("BESTIARY_LOG", "warn");
    for (key, value) in env.child_env() {
        command.env(key, value);
    }
    command
}

pub(crate) fn succeeded(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Uploads `per_class` generated photos of three classes under `prefix/in`; returns how many.
pub(crate) async fn upload_photos(env: &S3Env, prefix: &str, per_class: usize) -> usize {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(
        dir.path(),
        &["amber", "teal", "violet"],
        per_class,
        (160, 120),
    );
    upload_dir(dir.path(), &env.store(&format!("{prefix}/in"))).await
}

/// Completion markers under `out`, each with its number of results.
pub(crate) async fn markers(out: &Store) -> Vec<u64> {
    let keys: Vec<String> = out
        .list("")
        .map_ok(|info| info.key)
        .try_filter(|key| std::future::ready(key.contains("/progress/")))
        .try_collect()
        .await
        .unwrap();
    let mut counts = Vec::new();
    for key in keys {
        let marker: serde_json::Value =
            serde_json::from_slice(&out.get(&key).await.unwrap()).unwrap();
        counts.push(marker["records"].as_u64().unwrap());
    }
    counts
}

/// The merged results of `out`, through `classify --merge`.
pub(crate) fn merged_keys(env: &S3Env, out: &str) -> (serde_json::Value, Vec<String>) {
    merged_keys_with(bestiary(env), out)
}

/// The merged results of `out`, through `classify --merge` run by `command`.
pub(crate) fn merged_keys_with(
    mut command: Command,
    out: &str,
) -> (serde_json::Value, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("all.jsonl");
    let summary = succeeded(
        command
            .args(["classify", "--merge", out, "--json", "--merge-to"])
            .arg(&target)
            .output()
            .unwrap(),
    );
    let keys = std::fs::read_to_string(&target)
        .unwrap()
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["key"].as_str().unwrap().to_owned()
        })
        .collect();
    (serde_json::from_str(&summary).unwrap(), keys)
}

#[tokio::test]
async fn a_run_killed_halfway_and_rerun_yields_one_result_per_key() {
    let env = s3();
    let prefix = unique_prefix("cli-classify-kill");
    let photos = upload_photos(env, &prefix, 40).await;
    let input = env.url(&format!("{prefix}/in"));
    let out = env.url(&format!("{prefix}/out"));
    let out_store = env.store(&format!("{prefix}/out"));
    // The built-in model on one tract thread, in small parts: slow enough to be caught halfway.
    let args = [
        "classify",
        &input,
        "--out",
        &out,
        "--engine",
        "tract",
        "--threads",
        "1",
        "--decode-threads",
        "1",
        "--batch-size",
        "2",
        "--concurrency",
        "4",
        "--part-size",
        "5",
        "--json",
    ];
    let mut first = bestiary(env)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while markers(&out_store).await.len() < 3 {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended before it could be killed"
        );
        assert!(started.elapsed() < Duration::from_secs(300), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before: u64 = markers(&out_store).await.iter().sum();
    println!("killed with {before} of {photos} results committed");
    assert!(
        before > 0 && before < photos as u64,
        "killed halfway: {before} of {photos} committed"
    );

    let rerun: serde_json::Value =
        serde_json::from_str(&succeeded(bestiary(env).args(args).output().unwrap())).unwrap();
    assert_eq!(
        rerun["this_run"]["records"].as_u64().unwrap(),
        photos as u64 - before
    );
    assert_eq!(
        rerun["all_runs"]["records"].as_u64().unwrap(),
        photos as u64
    );
    assert_eq!(rerun["listing_complete"], true);

    let (summary, keys) = merged_keys(env, &out);
    assert_eq!(summary["runs"][0]["complete"], true, "{summary}");
    assert_eq!(keys.len(), photos, "one result per photo");
    assert_eq!(
        keys.iter().collect::<HashSet<_>>().len(),
        photos,
        "no key twice"
    );
}

/// Reads `bestiary serve`'s stdout until it says it serves a model; returns its address.
pub(crate) fn wait_until_serving(server: &mut Child) -> String {
    let stdout = server.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut address = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("listening on ") {
                address = rest.split([';', ' ']).next().map(str::to_owned);
            }
            if line.starts_with("serving ") {
                let _ = sender.send(address.clone());
            }
        }
    });
    receiver
        .recv_timeout(Duration::from_secs(120))
        .expect("bestiary serve did not start")
        .expect("bestiary serve printed its address")
}

#[tokio::test]
async fn photos_are_sent_to_a_running_server_with_endpoint() {
    let env = s3();
    let prefix = unique_prefix("cli-classify-endpoint");
    let photos = upload_photos(env, &prefix, 2).await;
    env.store(&format!("{prefix}/in"))
        .put("teal/broken.jpg", truncated_jpeg())
        .await
        .unwrap();
    let mut server = bestiary(env)
        .args(["serve", "--engine", "tract", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = wait_until_serving(&mut server);
    let out = tempfile::tempdir().unwrap();
    let output = bestiary(env)
        .args([
            "classify",
            &env.url(&format!("{prefix}/in")),
            "--json",
            "--out",
        ])
        .arg(out.path())
        .args(["--endpoint", &address])
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let report: serde_json::Value = serde_json::from_str(&succeeded(output)).unwrap();
    assert_eq!(
        report["this_run"]["records"].as_u64().unwrap(),
        photos as u64 + 1
    );
    assert_eq!(report["this_run"]["errors"]["corrupt"], 1, "{report}");
    assert_eq!(report["model"]["name"], "animals", "{report}");
    let labels = report["this_run"]["labels"].as_object().unwrap();
    assert_eq!(
        labels.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        photos as u64
    );
    let (_, keys) = merged_keys(env, out.path().to_str().unwrap());
    assert_eq!(keys.len(), photos + 1);
}
