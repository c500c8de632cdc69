//! Usage and cost accounting: images classified, CPU-seconds per image and the estimated cost of
//! 1,000 images at a price per vCPU-hour, for `GET /v1/usage`, the metrics and CloudWatch EMF.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use bestiary_engine::usage::CostModel;

use crate::metrics::ProcessStats;

/// Counters since the server became ready.
#[derive(Debug)]
pub struct Usage {
    cost_per_vcpu_hour: f64,
    vcpus: usize,
    started: Instant,
    /// Process CPU time when counting started: loading the first model is not charged to images.
    baseline: Mutex<Option<Duration>>,
    requests: AtomicU64,
    images: AtomicU64,
    batches: AtomicU64,
    inference_nanos: AtomicU64,
    by_label: Mutex<BTreeMap<String, u64>>,
    recent: Mutex<Recent>,
}

/// How far back the live figures look.
const RECENT_WINDOW: Duration = Duration::from_secs(60);
/// Images/s is taken over a shorter span, so that a console shows a change within seconds.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Requests and batches remembered at most: at 1,000 requests/s the percentiles of the last
/// 16,384 requests still describe the last seconds, in bounded memory.
const RECENT_CAPACITY: usize = 16_384;

/// Latencies of recent requests and sizes of recent batches, oldest first.
#[derive(Debug, Default)]
struct Recent {
    requests: VecDeque<(Instant, f32)>,
    batches: VecDeque<(Instant, u32)>,
}

impl Recent {
    fn forget_before(&mut self, now: Instant) {
        let horizon = now.checked_sub(RECENT_WINDOW);
        while let (Some((at, _)), Some(h)) = (self.requests.front(), horizon) {
            if *at >= h {
                break;
            }
            self.requests.pop_front();
        }
        while let (Some((at, _)), Some(h)) = (self.batches.front(), horizon) {
            if *at >= h {
                break;
            }
            self.batches.pop_front();
        }
    }
}

/// The last minute, for dashboards and the console: load, latency and the queue.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RecentActivity {
    /// Seconds the request figures cover (at most 60; less just after start).
    pub window_seconds: f64,
    /// Classification requests answered successfully in that window.
    pub requests: u64,
    /// Images classified per second over the last 10 seconds.
    pub images_per_second: f64,
    /// Percentiles of the requests' time in the server, in milliseconds; none without requests.
    pub latency_ms: Option<Percentiles>,
    /// Images admitted and not yet answered (pre-processing, queued or in inference).
    pub queue_depth: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// The nearest-rank percentile `q` (0..1) of sorted values.
fn percentile(sorted: &[f32], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

/// The figures of `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UsageReport {
    /// Seconds since the server became ready.
    pub uptime_seconds: f64,
    /// Classification requests answered successfully.
    pub requests: u64,
    pub images_classified: u64,
    pub batches: u64,
    pub mean_batch_size: f64,
    /// Wall-clock seconds the inference thread spent running batches.
    pub inference_seconds: f64,
    /// CPU-seconds used by the whole process (every thread: HTTP, decoding, inference) since
    /// the server became ready.
    pub cpu_seconds: f64,
    /// `cpu_seconds / images_classified`; 0 before the first image.
    pub cpu_seconds_per_image: f64,
    /// The price the estimates use (`--cost-per-vcpu-hour`).
    pub cost_per_vcpu_hour_usd: f64,
    /// Estimated cost of classifying 1,000 images: CPU-seconds per image × 1,000 at that price.
    pub cost_per_1000_images_usd: f64,
    /// Estimated cost of the CPU time used so far: what classifying took, not the bill.
    pub estimated_cost_usd: f64,
    /// vCPUs this server can use (the instance's, in a container its CPU limit).
    pub vcpus: usize,
    /// What the instance costs for the time served: vCPUs × uptime × the price. An always-on
    /// server is billed this whether or not photos arrive.
    pub instance_cost_usd: f64,
    /// The share of that capacity the server used: CPU-seconds ÷ (vCPUs × uptime), 0–1.
    pub capacity_used: f64,
    pub resident_memory_bytes: u64,
    /// Images classified per predicted label.
    pub images_by_label: BTreeMap<String, u64>,
    pub recent: RecentActivity,
}

impl Usage {
    pub fn new(cost_per_vcpu_hour: f64) -> Self {
        Self {
            cost_per_vcpu_hour,
            vcpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            started: Instant::now(),
            baseline: Mutex::new(None),
            requests: AtomicU64::new(0),
            images: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            inference_nanos: AtomicU64::new(0),
            by_label: Mutex::new(BTreeMap::new()),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// Starts charging CPU time to images, once (when the first model is ready).
    pub fn start_counting(&self) {
        let mut baseline = self.baseline.lock().unwrap_or_else(|p| p.into_inner());
        if baseline.is_none() {
            *baseline = Some(ProcessStats::read().map_or(Duration::ZERO, |s| s.cpu));
        }
    }

    /// One classification request answered successfully, after `latency` in the server.
    pub fn record_request(&self, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.forget_before(now);
        if recent.requests.len() == RECENT_CAPACITY {
            recent.requests.pop_front();
        }
        recent
            .requests
            .push_back((now, (latency.as_secs_f64() * 1e3) as f32));
    }

    /// One batch ran: its size, how long inference took and the labels it predicted.
    pub fn record_batch<'a>(&self, elapsed: Duration, labels: impl IntoIterator<Item = &'a str>) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.inference_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        let mut by_label = self.by_label.lock().unwrap_or_else(|p| p.into_inner());
        let mut images = 0;
        for label in labels {
            self.images.fetch_add(1, Ordering::Relaxed);
            *by_label.entry(label.to_string()).or_default() += 1;
            images += 1;
        }
        drop(by_label);
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.forget_before(now);
        if recent.batches.len() == RECENT_CAPACITY {
            recent.batches.pop_front();
        }
        recent.batches.push_back((now, images));
    }

    /// The figures of the last minute; `queue_depth` is the batcher's, given by the caller.
    pub fn recent(&self, queue_depth: u64) -> RecentActivity {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.forget_before(now);
        let mut latencies: Vec<f32> = recent.requests.iter().map(|(_, ms)| *ms).collect();
        latencies.sort_by(f32::total_cmp);
        let rate_horizon = now.checked_sub(RATE_WINDOW);
        let rate_images: u64 = recent
            .batches
            .iter()
            .filter(|(at, _)| rate_horizon.is_none_or(|h| *at >= h))
            .map(|(_, n)| u64::from(*n))
            .sum();
        let served = self.started.elapsed();
        let rate_span = served.min(RATE_WINDOW).as_secs_f64().max(1.0);
        RecentActivity {
            window_seconds: served.min(RECENT_WINDOW).as_secs_f64(),
            requests: latencies.len() as u64,
            images_per_second: rate_images as f64 / rate_span,
            latency_ms: (!latencies.is_empty()).then(|| Percentiles {
                p50: percentile(&latencies, 0.50),
                p90: percentile(&latencies, 0.90),
                p99: percentile(&latencies, 0.99),
            }),
            queue_depth,
        }
    }

    /// Every figure; `queue_depth` is the batcher's, given by the caller.
    pub fn report(&self, queue_depth: u64) -> UsageReport {
        let stats = ProcessStats::read();
        let baseline = self
            .baseline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(Duration::ZERO);
        let cpu_seconds = stats
            .map(|s| s.cpu.saturating_sub(baseline).as_secs_f64())
            .unwrap_or(0.0);
        let images = self.images.load(Ordering::Relaxed);
        let batches = self.batches.load(Ordering::Relaxed);
        let cost = CostModel {
            cost_per_vcpu_hour: self.cost_per_vcpu_hour,
        };
        let cpu_seconds_per_image = if images == 0 {
            0.0
        } else {
            cpu_seconds / images as f64
        };
        let uptime_seconds = self.started.elapsed().as_secs_f64();
        UsageReport {
            uptime_seconds,
            requests: self.requests.load(Ordering::Relaxed),
            images_classified: images,
            batches,
            mean_batch_size: if batches == 0 {
                0.0
            } else {
                images as f64 / batches as f64
            },
            inference_seconds: Duration::from_nanos(self.inference_nanos.load(Ordering::Relaxed))
                .as_secs_f64(),
            cpu_seconds,
            cpu_seconds_per_image,
            cost_per_vcpu_hour_usd: self.cost_per_vcpu_hour,
            cost_per_1000_images_usd: cost.per_1000_images(cpu_seconds_per_image),
            estimated_cost_usd: cost.of_cpu_seconds(cpu_seconds),
            vcpus: self.vcpus,
            instance_cost_usd: cost.of_cpu_seconds(self.vcpus as f64 * uptime_seconds),
            capacity_used: if uptime_seconds > 0.0 {
                (cpu_seconds / (self.vcpus as f64 * uptime_seconds)).clamp(0.0, 1.0)
            } else {
                0.0
            },
            resident_memory_bytes: stats.map_or(0, |s| s.resident_bytes),
            images_by_label: self
                .by_label
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            recent: self.recent(queue_depth),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_images_by_label_and_batches() {
        let usage = Usage::new(0.1);
        usage.start_counting();
        usage.record_batch(Duration::from_millis(4), ["cat", "dog", "cat"]);
        usage.record_batch(Duration::from_millis(2), ["dog"]);
        let report = usage.report(3);
        assert_eq!(report.images_classified, 4);
        assert_eq!(report.recent.queue_depth, 3);
        assert!(report.recent.images_per_second > 0.0);
        assert_eq!(report.batches, 2);
        assert_eq!(report.mean_batch_size, 2.0);
        assert_eq!(report.images_by_label["cat"], 2);
        assert!((report.inference_seconds - 0.006).abs() < 1e-9);
        assert!(report.cpu_seconds >= 0.0 && report.resident_memory_bytes > 0);
    }

    #[test]
    fn an_idle_server_still_costs_its_instance() {
        let usage = Usage::new(3600.0);
        usage.start_counting();
        std::thread::sleep(Duration::from_millis(200));
        let report = usage.report(0);
        // Idle: almost no CPU used, yet the instance is billed for every vCPU all along.
        let expected = report.vcpus as f64 * report.uptime_seconds;
        assert!(
            (report.instance_cost_usd - expected).abs() < 1e-6,
            "{report:?}"
        );
        assert!(report.instance_cost_usd >= 0.2 * report.vcpus as f64);
        // (The CPU share is the whole process's: other tests run in it, so only its range.)
        assert!((0.0..=1.0).contains(&report.capacity_used), "{report:?}");
    }

    #[test]
    fn recent_latency_percentiles_use_the_nearest_rank() {
        let usage = Usage::new(0.1);
        assert_eq!(usage.recent(0).latency_ms, None);
        for ms in 1..=100 {
            usage.record_request(Duration::from_millis(ms));
        }
        let recent = usage.recent(0);
        assert_eq!(recent.requests, 100);
        let latency = recent.latency_ms.unwrap();
        assert_eq!((latency.p50, latency.p90, latency.p99), (50.0, 90.0, 99.0));
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
