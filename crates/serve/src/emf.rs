//! CloudWatch Embedded Metric Format: the usage and cost figures as one JSON line per period on
//! stdout, which CloudWatch Logs turns into metrics with no agent (SageMaker, ECS and Lambda
//! send a container's stdout there).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use bestiary_engine::usage::CostModel;

use crate::usage::UsageReport;

/// The namespace the metrics appear under in CloudWatch.
pub const NAMESPACE: &str = "Bestiary";

/// The EMF record of what happened between two usage reports.
pub fn emf_record(
    model: &str,
    version: &str,
    previous: &UsageReport,
    current: &UsageReport,
    timestamp: SystemTime,
) -> Value {
    let requests = current.requests.saturating_sub(previous.requests);
    let images = current
        .images_classified
        .saturating_sub(previous.images_classified);
    let batches = current.batches.saturating_sub(previous.batches);
    let cpu_seconds = (current.cpu_seconds - previous.cpu_seconds).max(0.0);
    let cpu_seconds_per_image = if images == 0 {
        0.0
    } else {
        cpu_seconds / images as f64
    };
    let cost = CostModel {
        cost_per_vcpu_hour: current.cost_per_vcpu_hour_usd,
    };
    let millis = timestamp
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "_aws": {
            "Timestamp": millis,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Model"], ["Model", "Version"]],
                "Metrics": [
                    {"Name": "Requests", "Unit": "Count"},
                    {"Name": "ImagesClassified", "Unit": "Count"},
                    {"Name": "Batches", "Unit": "Count"},
                    {"Name": "MeanBatchSize", "Unit": "None"},
                    {"Name": "CpuSeconds", "Unit": "Seconds"},
                    {"Name": "CpuSecondsPerImage", "Unit": "Seconds"},
                    {"Name": "CostPer1000ImagesUSD", "Unit": "None"},
                    {"Name": "EstimatedCostUSD", "Unit": "None"},
                    {"Name": "ResidentMemory", "Unit": "Bytes"},
                ],
            }],
        },
        "Model": model,
        "Version": version,
        "Requests": requests,
        "ImagesClassified": images,
        "Batches": batches,
        "MeanBatchSize": if batches == 0 { 0.0 } else { images as f64 / batches as f64 },
        "CpuSeconds": cpu_seconds,
        "CpuSecondsPerImage": cpu_seconds_per_image,
        "CostPer1000ImagesUSD": cost.per_1000_images(cpu_seconds_per_image),
        "EstimatedCostUSD": cost.of_cpu_seconds(cpu_seconds),
        "ResidentMemory": current.resident_memory_bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn report(requests: u64, images: u64, batches: u64, cpu_seconds: f64) -> UsageReport {
        UsageReport {
            uptime_seconds: 0.0,
            requests,
            images_classified: images,
            batches,
            mean_batch_size: 0.0,
            inference_seconds: 0.0,
            cpu_seconds,
            cpu_seconds_per_image: 0.0,
            cost_per_vcpu_hour_usd: 0.0575,
            cost_per_1000_images_usd: 0.0,
            estimated_cost_usd: 0.0,
            vcpus: 2,
            instance_cost_usd: 0.0,
            capacity_used: 0.0,
            resident_memory_bytes: 50_000_000,
            images_by_label: BTreeMap::new(),
            recent: crate::usage::RecentActivity {
                window_seconds: 0.0,
                requests: 0,
                images_per_second: 0.0,
                latency_ms: None,
                queue_depth: 0,
            },
        }
    }

    #[test]
    fn a_record_holds_the_period_and_declares_every_metric() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let record = emf_record(
            "animals",
            "v2",
            &report(10, 40, 10, 2.0),
            &report(15, 60, 12, 3.0),
            at,
        );
        assert_eq!(record["_aws"]["Timestamp"], 1_700_000_000_123u64);
        assert_eq!(record["Requests"], 5);
        assert_eq!(record["ImagesClassified"], 20);
        assert_eq!(record["MeanBatchSize"], 10.0);
        assert!((record["CpuSecondsPerImage"].as_f64().unwrap() - 0.05).abs() < 1e-12);
        // 0.05 CPU-s per image: 50 CPU-s per 1,000 images at 0.0575 per 3,600 CPU-s.
        let cost = record["CostPer1000ImagesUSD"].as_f64().unwrap();
        assert!((cost - 50.0 / 3600.0 * 0.0575).abs() < 1e-12);
        // CloudWatch rejects a record whose declared metrics are missing from its root.
        for metric in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
        {
            let name = metric["Name"].as_str().unwrap();
            assert!(record[name].is_number(), "{name}");
        }
    }
}
