//! Usage and cost accounting: images classified, CPU-seconds per image and the estimated cost of
//! 1,000 images at a price per vCPU-hour, for `GET /v1/usage`, the metrics and CloudWatch EMF.

use std::collections::BTreeMap;
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
    started: Instant,
    /// Process CPU time when counting started: loading the first model is not charged to images.
    baseline: Mutex<Option<Duration>>,
    requests: AtomicU64,
    images: AtomicU64,
    batches: AtomicU64,
    inference_nanos: AtomicU64,
    by_label: Mutex<BTreeMap<String, u64>>,
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
    /// Estimated cost of the CPU time used so far.
    pub estimated_cost_usd: f64,
    pub resident_memory_bytes: u64,
    /// Images classified per predicted label.
    pub images_by_label: BTreeMap<String, u64>,
}

impl Usage {
    pub fn new(cost_per_vcpu_hour: f64) -> Self {
        Self {
            cost_per_vcpu_hour,
            started: Instant::now(),
            baseline: Mutex::new(None),
            requests: AtomicU64::new(0),
            images: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            inference_nanos: AtomicU64::new(0),
            by_label: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts charging CPU time to images, once (when the first model is ready).
    pub fn start_counting(&self) {
        let mut baseline = self.baseline.lock().unwrap_or_else(|p| p.into_inner());
        if baseline.is_none() {
            *baseline = Some(ProcessStats::read().map_or(Duration::ZERO, |s| s.cpu));
        }
    }

    pub fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// One batch ran: its size, how long inference took and the labels it predicted.
    pub fn record_batch<'a>(&self, elapsed: Duration, labels: impl IntoIterator<Item = &'a str>) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.inference_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        let mut by_label = self.by_label.lock().unwrap_or_else(|p| p.into_inner());
        for label in labels {
            self.images.fetch_add(1, Ordering::Relaxed);
            *by_label.entry(label.to_string()).or_default() += 1;
        }
    }

    pub fn report(&self) -> UsageReport {
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
        UsageReport {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
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
            resident_memory_bytes: stats.map_or(0, |s| s.resident_bytes),
            images_by_label: self
                .by_label
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
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
        let report = usage.report();
        assert_eq!(report.images_classified, 4);
        assert_eq!(report.batches, 2);
        assert_eq!(report.mean_batch_size, 2.0);
        assert_eq!(report.images_by_label["cat"], 2);
        assert!((report.inference_seconds - 0.006).abs() < 1e-9);
        assert!(report.cpu_seconds >= 0.0 && report.resident_memory_bytes > 0);
    }
}
