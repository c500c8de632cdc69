//! Prometheus metrics: the recorder, the names of every series, and process CPU and memory.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bestiary_engine::usage::process_cpu_time;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "bestiary_requests_total";
pub const REQUEST_DURATION: &str = "bestiary_request_duration_seconds";
pub const QUEUE_DURATION: &str = "bestiary_queue_duration_seconds";
pub const PREPROCESS_DURATION: &str = "bestiary_preprocess_duration_seconds";
pub const INFERENCE_DURATION: &str = "bestiary_inference_duration_seconds";
pub const BATCH_SIZE: &str = "bestiary_batch_size";
pub const QUEUE_DEPTH: &str = "bestiary_queue_depth";
/// The time integral of [`QUEUE_DEPTH`] (image-seconds), so that `rate()` over any window is the
/// mean number of images in flight during it, whatever the scrape interval.
pub const IN_FLIGHT_IMAGE_SECONDS: &str = "bestiary_in_flight_image_seconds_total";
pub const IMAGES_CLASSIFIED: &str = "bestiary_images_classified_total";
pub const IMAGES_REJECTED: &str = "bestiary_images_rejected_total";
pub const MODEL_INFO: &str = "bestiary_model_info";
pub const MODEL_RELOADS: &str = "bestiary_model_reloads_total";
pub const PROCESS_CPU_SECONDS: &str = "bestiary_process_cpu_seconds_total";
pub const PROCESS_RESIDENT_MEMORY: &str = "bestiary_process_resident_memory_bytes";
pub const CPU_SECONDS_PER_IMAGE: &str = "bestiary_cpu_seconds_per_image";
pub const COST_PER_1000_IMAGES: &str = "bestiary_cost_per_1000_images_usd";
pub const COST_PER_VCPU_HOUR: &str = "bestiary_cost_per_vcpu_hour_usd";

/// Latency buckets in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    20.0, 30.0,
];
const BATCH_SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process-wide Prometheus recorder. `metrics` has one global recorder per process, so every
/// server in a process (tests start several) shares it; it is installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_SIZE_BUCKETS)
            })
            .expect("bucket lists are non-empty")
            .install_recorder()
            .expect("no other metrics recorder is installed in this process")
    })
}

/// The text exposition of every metric, with the process figures refreshed first.
pub fn render() -> String {
    let handle = prometheus();
    if let Some(stats) = ProcessStats::read() {
        // A gauge, because `metrics` counters are integers and CPU time is fractional.
        gauge!(PROCESS_CPU_SECONDS).set(stats.cpu.as_secs_f64());
        gauge!(PROCESS_RESIDENT_MEMORY).set(stats.resident_bytes as f64);
    }
    // A gauge, as CPU seconds above: the figure is fractional. Brought up to now, so a scrape
    // during a long request sees the time it has been in flight so far.
    gauge!(IN_FLIGHT_IMAGE_SECONDS).set(in_flight().image_seconds(Instant::now()));
    handle.run_upkeep();
    handle.render()
}

/// Records one finished HTTP request.
pub fn record_request(route: &str, status: u16, elapsed: Duration) {
    let route = route.to_string();
    let status = status.to_string();
    counter!(REQUESTS, "route" => route.clone(), "status" => status.clone()).increment(1);
    // By status too: the latency of admitted requests must not hide among fast 429s.
    histogram!(REQUEST_DURATION, "route" => route, "status" => status)
        .record(elapsed.as_secs_f64());
}

/// Images admitted in this process and their integral over time, for [`IN_FLIGHT_IMAGE_SECONDS`].
/// One per process, as the recorder is: several batchers in one process add up.
fn in_flight() -> &'static InFlightClock {
    static CLOCK: OnceLock<InFlightClock> = OnceLock::new();
    CLOCK.get_or_init(|| InFlightClock::new(Instant::now()))
}

/// Records that `images` images were admitted (positive) or finished (negative) just now.
pub fn images_in_flight_changed(images: i64) {
    in_flight().change(Instant::now(), images);
}

/// Integrates a count of images over time: image-seconds since it started.
#[derive(Debug)]
pub struct InFlightClock {
    state: Mutex<InFlightState>,
}

#[derive(Debug)]
struct InFlightState {
    images: i64,
    since: Instant,
    image_seconds: f64,
}

impl InFlightState {
    /// Adds the time from `since` to `now` at the current count.
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since);
        self.image_seconds += self.images.max(0) as f64 * elapsed.as_secs_f64();
        self.since = self.since.max(now);
    }
}

impl InFlightClock {
    pub fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(InFlightState {
                images: 0,
                since: now,
                image_seconds: 0.0,
            }),
        }
    }

    /// The count changes by `images` at `now`.
    pub fn change(&self, now: Instant, images: i64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.advance(now);
        state.images += images;
    }

    /// Image-seconds accumulated until `now`; never decreases.
    pub fn image_seconds(&self, now: Instant) -> f64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.advance(now);
        state.image_seconds
    }
}

/// What this process has used so far (Linux).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time of every thread.
    pub cpu: Duration,
    pub resident_bytes: u64,
}

impl ProcessStats {
    /// `None` where the figures are not available.
    pub fn read() -> Option<Self> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        Some(Self {
            cpu: process_cpu_time()?,
            resident_bytes: Self::parse_statm(&statm, page_size())?,
        })
    }

    /// Resident bytes from `/proc/self/statm` (its second field, in pages).
    fn parse_statm(statm: &str, page_size: u64) -> Option<u64> {
        let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(resident_pages * page_size)
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for unknown names.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_statm() {
        assert_eq!(
            ProcessStats::parse_statm("5000 300 200 1 0 400 0", 4096),
            Some(300 * 4096)
        );
        assert_eq!(ProcessStats::parse_statm("5000", 4096), None);
    }

    #[test]
    fn in_flight_image_seconds_integrate_the_count() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let clock = InFlightClock::new(start);
        clock.change(at(1_000), 2); // nothing in flight for the first second
        let at_2s = clock.image_seconds(at(2_000)); // 2 images for 1 s
        assert!((at_2s - 2.0).abs() < 1e-9, "{at_2s}");
        clock.change(at(2_500), 1); // 2 images for 1.5 s: 3 image-seconds
        assert!((clock.image_seconds(at(3_000)) - 4.5).abs() < 1e-9); // + 3 images for 0.5 s
        clock.change(at(3_500), -3); // + 3 images for 0.5 s
        assert!((clock.image_seconds(at(10_000)) - 6.0).abs() < 1e-9); // idle since
        // A reading for an earlier instant (another thread's clock) never goes back.
        assert!((clock.image_seconds(at(9_000)) - 6.0).abs() < 1e-9);
        clock.change(at(10_000), 4);
        // What rate() computes over the window from 2 s to 12 s: the mean images in flight,
        // (0.5 s × 2 + 1 s × 3 + 2 s × 4) / 10 s.
        let mean = (clock.image_seconds(at(12_000)) - at_2s) / 10.0;
        assert!((mean - 1.2).abs() < 1e-9, "{mean}");
    }

    #[test]
    fn reads_this_process_and_its_cpu_time_grows() {
        let before = ProcessStats::read().expect("Linux has /proc/self");
        assert!(before.resident_bytes > 1024 * 1024, "{before:?}");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let after = ProcessStats::read().unwrap();
        assert!(after.cpu > before.cpu, "{before:?} then {after:?}");
    }
}
