//! `watch` against a real S3 server (SeaweedFS): photos uploaded while it runs are classified
//! once each (new keys after the cursor, keys that sort before it, changed content), and a
//! restarted watch repeats none of them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{config, photo_bytes, results, small_model, upload_photos};
use bestiary_bulk::{BulkConfig, Progress, RunReport, WatchOptions, watch};
use bestiary_testkit::{s3, unique_prefix};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Watching {
    progress: Arc<Progress>,
    stop: CancellationToken,
    task: JoinHandle<RunReport>,
}

fn start(config: &BulkConfig) -> Watching {
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let options = WatchOptions {
        interval: Duration::from_millis(100),
        rescan_interval: Duration::from_millis(600),
    };
    let task = tokio::spawn({
        let (config, progress, stop) = (config.clone(), progress.clone(), stop.clone());
        async move {
            watch(&config, &options, progress, &stop)
                .await
                .expect("watch runs")
        }
    });
    Watching {
        progress,
        stop,
        task,
    }
}

impl Watching {
    /// Waits until `count` results are committed.
    async fn committed(&self, count: u64) {
        let started = Instant::now();
        loop {
            let now = self.progress.snapshot().committed;
            assert!(now <= count, "{now} results committed, expected {count}");
            if now == count {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "only {now} of {count} results after 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> RunReport {
        self.stop.cancel();
        self.task.await.expect("watch task")
    }
}

#[tokio::test]
async fn watch_classifies_arrivals_once_and_resumes_without_repeating() {
    let env = s3();
    let prefix = unique_prefix("bulk-watch");
    let input = env.store(&format!("{prefix}/in"));
    upload_photos(&input, 2, "b").await;
    let model = small_model().await;
    let out = env.url(&format!("{prefix}/out"));
    let config = config(
        &env.url(&format!("{prefix}/in")),
        &out,
        Some(&model.url),
        env.options(),
    );

    let watching = start(&config);
    watching.committed(6).await;
    // After the cursor (found by the next poll) and before it (found by the next full listing).
    input
        .put("violet/z000.jpg", photo_bytes(2, 7))
        .await
        .unwrap();
    input
        .put("amber/a000.jpg", photo_bytes(0, 8))
        .await
        .unwrap();
    input
        .put("notes.txt", b"not a photo".to_vec())
        .await
        .unwrap();
    watching.committed(8).await;
    // New content under an existing key is a new photo to classify.
    input
        .put("amber/b000.jpg", photo_bytes(0, 9))
        .await
        .unwrap();
    watching.committed(9).await;
    let first = watching.stop().await;
    assert_eq!(first.this_run.records, 9);

    let restarted = start(&config);
    input
        .put("teal/c000.jpg", photo_bytes(1, 10))
        .await
        .unwrap();
    restarted.committed(1).await;
    // Two more full listings: anything it wrongly took for new would show up by then.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    restarted.committed(1).await;
    let second = restarted.stop().await;
    assert_eq!(second.this_run.records, 1);
    assert_eq!(second.all_runs.records, 10);

    let records = results(&out, &env.options()).await;
    let versions: HashSet<(String, Option<String>)> = records
        .iter()
        .map(|r| (r.key.clone(), r.etag.clone()))
        .collect();
    assert_eq!(
        versions.len(),
        records.len(),
        "each content of each key once"
    );
    let keys: HashSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), 9, "{keys:?}");
    assert_eq!(
        records.iter().filter(|r| r.key == "amber/b000.jpg").count(),
        2,
        "the changed photo was classified again"
    );
    assert!(records.iter().all(|r| r.label.is_some()));
}
