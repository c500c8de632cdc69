//! The figures a run ends with: counts, throughput, CPU time and what that CPU time costs.

use std::time::Duration;

use bestiary_engine::usage::CostModel;
use serde::Serialize;

use crate::config::Shard;
use crate::manifest::{ModelIdentity, Tally};

/// Which command produced a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Classify,
    Watch,
}

/// The summary of one `classify` or `watch` run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub command: Command,
    pub input: String,
    /// The shard folder results went to.
    pub output: String,
    pub model: ModelIdentity,
    pub model_source: String,
    pub shard: Shard,
    /// Results this run committed.
    pub this_run: Tally,
    /// Results in the shard folder, this run's and earlier runs'.
    pub all_runs: Tally,
    /// Keys listed but not this run's: other extensions, globs, other shards.
    pub not_selected: u64,
    pub parts_written: u64,
    /// Whether the listing was read to its end (classify).
    pub listing_complete: bool,
    /// Stopped by a signal before the end.
    pub interrupted: bool,
    pub elapsed_seconds: f64,
    pub images_per_second: f64,
    /// CPU time of the whole process while classifying (model loading excluded).
    pub cpu_seconds: f64,
    pub cpu_seconds_per_image: f64,
    pub cost_per_vcpu_hour_usd: f64,
    /// `cpu_seconds` at `cost_per_vcpu_hour_usd`.
    pub estimated_cost_usd: f64,
    pub cost_per_1000_images_usd: f64,
}

/// Throughput and cost figures from the raw measurements.
pub struct Measured {
    pub images: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
    pub cost_per_vcpu_hour: f64,
}

impl Measured {
    /// `(images_per_second, cpu_seconds_per_image, estimated_cost, cost_per_1000)`.
    pub fn figures(&self) -> (f64, f64, f64, f64) {
        let seconds = self.elapsed.as_secs_f64();
        let cpu = self.cpu.as_secs_f64();
        let rate = if seconds > 0.0 {
            self.images as f64 / seconds
        } else {
            0.0
        };
        let per_image = if self.images > 0 {
            cpu / self.images as f64
        } else {
            0.0
        };
        let cost = CostModel {
            cost_per_vcpu_hour: self.cost_per_vcpu_hour,
        };
        (
            rate,
            per_image,
            cost.of_cpu_seconds(cpu),
            cost.per_1000_images(per_image),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_cpu_hours_at_the_price() {
        let measured = Measured {
            images: 1000,
            elapsed: Duration::from_secs(10),
            cpu: Duration::from_secs(36),
            cost_per_vcpu_hour: 0.05,
        };
        let (rate, per_image, cost, per_1000) = measured.figures();
        assert_eq!(rate, 100.0);
        assert!((per_image - 0.036).abs() < 1e-12);
        assert!((cost - 0.0005).abs() < 1e-12);
        assert!((per_1000 - 0.0005).abs() < 1e-12);
    }
}
