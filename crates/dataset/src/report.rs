//! `dataset inspect`: reads every photo of a dataset once and reports classes, counts, split
//! sizes, image sizes and every file that cannot be used, with the reason.

use std::collections::BTreeMap;
use std::fmt::Write;

use futures::StreamExt;
use serde::Serialize;

use crate::decode::DecodeLimits;
use crate::loader::decode_for_report;
use crate::source::{Dataset, Layout, SkippedFile};

/// Counts of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassReport {
    pub name: String,
    pub train: usize,
    pub validation: usize,
    /// Photos of this class that could not be decoded.
    pub bad: usize,
}

/// Minimum, median, mean and maximum of a measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Summary {
    pub min: u32,
    pub median: u32,
    pub mean: f64,
    pub max: u32,
}

impl Summary {
    fn of(mut values: Vec<u32>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        Self {
            min: values[0],
            median: values[values.len() / 2],
            mean: (mean * 10.0).round() / 10.0,
            max: values[values.len() - 1],
        }
    }
}

/// Everything `dataset inspect` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetReport {
    pub url: String,
    pub layout: Layout,
    pub validation_source: String,
    pub classes: Vec<ClassReport>,
    /// Usable photos in each split.
    pub train: usize,
    pub validation: usize,
    pub width: Summary,
    pub height: Summary,
    pub formats: BTreeMap<String, usize>,
    /// Photos that failed to decode (corrupt, truncated, empty, not an image, too large).
    pub bad_files: Vec<SkippedFile>,
    /// Listed files that were not taken as photos at all.
    pub ignored_files: Vec<SkippedFile>,
    pub fingerprint: String,
}

/// Downloads and decodes every photo of `dataset` (`concurrency` at a time); `progress` gets
/// (done, total) after each photo.
pub async fn inspect(
    dataset: &Dataset,
    concurrency: usize,
    limits: &DecodeLimits,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> DatasetReport {
    let samples: Vec<(bool, &crate::Sample)> = dataset
        .train
        .iter()
        .map(|s| (false, s))
        .chain(dataset.validation.iter().map(|s| (true, s)))
        .collect();
    let total = samples.len() as u64;
    let mut results = futures::stream::iter(samples)
        .map(|(is_validation, sample)| {
            let store = dataset.store_of(sample).clone();
            let limits = limits.clone();
            async move {
                let outcome = match store.get(&sample.key).await {
                    Ok(bytes) => {
                        tokio::task::spawn_blocking(move || decode_for_report(&bytes, &limits))
                            .await
                            .expect("decode task")
                            .map_err(|e| (e.code().to_string(), e.to_string()))
                    }
                    Err(e) => Err(("unreadable".to_string(), e.to_string())),
                };
                (is_validation, sample, outcome)
            }
        })
        .buffer_unordered(concurrency.max(1));

    let mut classes: Vec<ClassReport> = dataset
        .classes
        .iter()
        .map(|name| ClassReport {
            name: name.clone(),
            train: 0,
            validation: 0,
            bad: 0,
        })
        .collect();
    let (mut widths, mut heights) = (Vec::new(), Vec::new());
    let mut formats = BTreeMap::new();
    let mut bad_files = Vec::new();
    let mut done = 0;
    while let Some((is_validation, sample, outcome)) = results.next().await {
        let class = &mut classes[sample.label];
        match outcome {
            Ok((width, height, format)) => {
                widths.push(width);
                heights.push(height);
                *formats.entry(format).or_insert(0) += 1;
                if is_validation {
                    class.validation += 1
                } else {
                    class.train += 1
                }
            }
            Err((code, reason)) => {
                class.bad += 1;
                bad_files.push(SkippedFile {
                    id: sample.id.clone(),
                    code,
                    reason,
                });
            }
        }
        done += 1;
        progress(done, total);
    }
    bad_files.sort();
    DatasetReport {
        url: dataset.url.clone(),
        layout: dataset.layout,
        validation_source: dataset.validation_source.clone(),
        train: classes.iter().map(|c| c.train).sum(),
        validation: classes.iter().map(|c| c.validation).sum(),
        classes,
        width: Summary::of(widths),
        height: Summary::of(heights),
        formats,
        bad_files,
        ignored_files: dataset.ignored.clone(),
        fingerprint: dataset.fingerprint(),
    }
}

impl DatasetReport {
    /// The report as a person reads it in a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Dataset   {}", self.url);
        let _ = writeln!(
            out,
            "Layout    {}",
            serde_json::to_value(self.layout)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("")
        );
        let _ = writeln!(out, "Split     {}", self.validation_source);
        let _ = writeln!(
            out,
            "Photos    {} train, {} validation, {} bad, {} ignored",
            self.train,
            self.validation,
            self.bad_files.len(),
            self.ignored_files.len()
        );
        let _ = writeln!(
            out,
            "Size      width {}–{} (median {}), height {}–{} (median {})",
            self.width.min,
            self.width.max,
            self.width.median,
            self.height.min,
            self.height.max,
            self.height.median
        );
        let formats: Vec<String> = self
            .formats
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        let _ = writeln!(out, "Formats   {}", formats.join(", "));
        let _ = writeln!(out, "\n{} classes:", self.classes.len());
        let width = self
            .classes
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "  {:<width$}  {:>7}  {:>10}  {:>5}",
            "class", "train", "validation", "bad"
        );
        for class in &self.classes {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>7}  {:>10}  {:>5}",
                class.name, class.train, class.validation, class.bad
            );
        }
        for (title, files) in [
            ("Bad files", &self.bad_files),
            ("Ignored files", &self.ignored_files),
        ] {
            if !files.is_empty() {
                let _ = writeln!(out, "\n{title} ({}):", files.len());
                for file in files {
                    let _ = writeln!(out, "  {}  [{}] {}", file.id, file.code, file.reason);
                }
            }
        }
        let _ = writeln!(out, "\nFingerprint {}", self.fingerprint);
        out
    }
}
