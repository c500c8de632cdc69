//! What classifying costs: the process's CPU time and its price at a rate per vCPU-hour, shared
//! by the server's usage report and the bulk jobs' summaries.

use std::time::Duration;

/// CPU time of the whole process so far (every thread, user and system), from the process CPU
/// clock: exact, where `/proc/self/stat` and `getrusage` count in coarser ticks. `None` where
/// the clock is unavailable.
pub fn process_cpu_time() -> Option<Duration> {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec for the duration of the call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut time) };
    (status == 0).then(|| Duration::new(time.tv_sec as u64, time.tv_nsec as u32))
}

/// Turns CPU time into money at a price per vCPU-hour (one busy vCPU for one hour).
#[derive(Debug, Clone, Copy)]
pub struct CostModel {
    pub cost_per_vcpu_hour: f64,
}

impl CostModel {
    pub fn of_cpu_seconds(self, cpu_seconds: f64) -> f64 {
        cpu_seconds / 3600.0 * self.cost_per_vcpu_hour
    }

    pub fn per_1000_images(self, cpu_seconds_per_image: f64) -> f64 {
        self.of_cpu_seconds(cpu_seconds_per_image * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = process_cpu_time().expect("the process CPU clock exists on Linux");
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_time().unwrap() > before);
    }

    #[test]
    fn cost_of_a_vcpu_hour_is_the_price() {
        let cost = CostModel {
            cost_per_vcpu_hour: 0.0575,
        };
        assert!((cost.of_cpu_seconds(3600.0) - 0.0575).abs() < 1e-12);
        // 36 ms of CPU per image: 36 CPU-seconds per 1,000 images, 1% of an hour.
        assert!((cost.per_1000_images(0.036) - 0.000575).abs() < 1e-12);
    }
}
