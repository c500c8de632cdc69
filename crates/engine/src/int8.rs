//! Int8 calibration: runs a model's float graph in onnxruntime over photos, measures the range of
//! every tensor the int8 rewrite quantises, and writes the QDQ graph onnxruntime serves.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bestiary_model::onnx::quantize::{
    QuantizeOptions, QuantizeSummary, TensorRange, calibration_graph, quantize,
};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use bestiary_model::ModelMetadata;

use crate::engine::{EngineKind, EngineOptions};
use crate::error::EngineError;
use crate::model::ONNX_FILE;
use crate::ort_engine::{ensure_onnxruntime, find_onnxruntime, runtime};

/// Where `bestiary export --int8` writes the int8 graph in a version folder.
pub const INT8_FILE: &str = "model.int8.onnx";

/// Images per calibration run: the graph then returns every quantised tensor, some 40 MB per
/// EfficientNet-Lite0 image, so large batches would take gigabytes.
const IMAGES_PER_RUN: usize = 4;
/// Histogram bins per tensor for [`RangeMethod::Percentile`].
const BINS: usize = 4096;

/// Which graph of a model version the ONNX engines run, as `--precision` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// The int8 graph when the version has one and onnxruntime runs it, else `model.onnx`:
    /// int8 is the faster of the two there at the same accuracy (see the README's "int8
    /// inference"), while tract gains nothing from it and burn cannot run it.
    #[default]
    Auto,
    /// `model.onnx`: float32 arithmetic (whether its weights are stored as float32 or float16).
    Fp32,
    /// The int8 QDQ graph `bestiary export --int8` wrote beside it.
    Int8,
}

impl Precision {
    pub const NAMES: [&'static str; 3] = ["auto", "fp32", "int8"];

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
        }
    }

    /// The precision a version runs at on `engine`: `auto` made `fp32` or `int8` (see
    /// [`Precision::Auto`]); `onnxruntime_here` says whether `engine`'s `auto` finds
    /// onnxruntime, asked only when it matters.
    pub fn resolve(
        self,
        metadata: &ModelMetadata,
        engine: EngineKind,
        onnxruntime_here: impl FnOnce() -> bool,
    ) -> Self {
        let runs_int8 = || match engine {
            EngineKind::Ort => true,
            EngineKind::Auto => onnxruntime_here(),
            EngineKind::Tract | EngineKind::Burn => false,
        };
        match self {
            Self::Auto if metadata.int8.is_some() && runs_int8() => Self::Int8,
            Self::Auto => Self::Fp32,
            other => other,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "fp32" | "float32" | "float" => Ok(Self::Fp32),
            "int8" => Ok(Self::Int8),
            other => Err(format!(
                "unknown precision {other:?} (expected one of {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Whether `options` let the engine `auto` reach onnxruntime: its library is here, or may be
/// downloaded.
pub fn onnxruntime_reachable(options: &EngineOptions) -> bool {
    options.allow_download || find_onnxruntime().is_ok()
}

/// The file of a version's graph that `engine` loads at `precision` (already resolved, see
/// [`Precision::resolve`]): `model.onnx`, or the int8 graph its metadata records.
///
/// # Errors
/// A sentence for the user when the version has no int8 graph (or burn is asked to run one).
pub fn graph_file(
    metadata: &ModelMetadata,
    precision: Precision,
    engine: EngineKind,
) -> Result<&str, String> {
    match precision {
        Precision::Fp32 | Precision::Auto => Ok(ONNX_FILE),
        Precision::Int8 if engine == EngineKind::Burn => {
            Err("int8 graphs run on the ONNX engines (auto, ort, tract), not on burn".to_owned())
        }
        Precision::Int8 => match &metadata.int8 {
            Some(graph) if !graph.file.contains('/') && !graph.file.is_empty() => {
                Ok(graph.file.as_str())
            }
            Some(graph) => Err(format!(
                "model.json names the int8 graph {:?}, which is not a file name",
                graph.file
            )),
            None => Err(format!(
                "this version has no int8 graph; write one with `bestiary export --model <version> --int8` \
                 (then it is `{INT8_FILE}`), or run it at --precision fp32"
            )),
        },
    }
}

/// How a tensor's calibrated range is taken from the values it had.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeMethod {
    /// The smallest and largest value seen.
    MinMax,
    /// The values at this percentile from either end (99.99 drops the 0.01 % most extreme on
    /// each side), so that a few outliers do not stretch the 256 steps over a wide range.
    Percentile(f64),
}

impl fmt::Display for RangeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MinMax => f.write_str("minmax"),
            Self::Percentile(p) => write!(f, "percentile-{p}"),
        }
    }
}

impl FromStr for RangeMethod {
    type Err = String;

    /// `minmax`, `percentile` (99.99) or `percentile-<p>` with 50 < p < 100.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "minmax" | "min-max" => Ok(Self::MinMax),
            "percentile" => Ok(Self::Percentile(99.99)),
            other => other
                .strip_prefix("percentile-")
                .and_then(|p| p.parse::<f64>().ok())
                .filter(|p| *p > 50.0 && *p < 100.0)
                .map(Self::Percentile)
                .ok_or_else(|| {
                    format!(
                        "unknown range method {s:?} (expected minmax, percentile or percentile-<p> with 50 < p < 100)"
                    )
                }),
        }
    }
}

/// What [`quantize_model`] did.
#[derive(Debug, Clone)]
pub struct Int8Model {
    /// The QDQ graph.
    pub onnx: Vec<u8>,
    pub summary: QuantizeSummary,
    /// Photos the ranges were measured on.
    pub images: usize,
}

/// Calibrates `onnx` (a float or float16-weight graph) on the images `batches` yields and
/// returns its int8 form. `batches` is called once for [`RangeMethod::MinMax`] and twice for
/// percentiles (ranges first, then histograms within them); each call must yield the same
/// preprocessed images, `(values, count)` per batch.
///
/// # Errors
/// [`EngineError::Unavailable`] without onnxruntime, [`EngineError::InvalidModel`] when the
/// graph cannot be quantised or yields no images, [`EngineError::Inference`] when a run fails.
pub fn quantize_model<I>(
    onnx: &[u8],
    method: RangeMethod,
    quantize_options: QuantizeOptions,
    engine_options: &EngineOptions,
    batches: impl FnMut() -> I,
) -> Result<Int8Model, EngineError>
where
    I: Iterator<Item = (Vec<f32>, usize)>,
{
    let (ranges, images) = calibrate(onnx, method, engine_options, batches)?;
    let (quantized, summary) =
        quantize(onnx, &ranges, quantize_options).map_err(|e| invalid(e.to_string()))?;
    Ok(Int8Model {
        onnx: quantized,
        summary,
        images,
    })
}

/// The range of every tensor the int8 rewrite of `onnx` quantises, over the images `batches`
/// yields (see [`quantize_model`]), and how many images that was.
///
/// # Errors
/// As [`quantize_model`].
pub fn calibrate<I>(
    onnx: &[u8],
    method: RangeMethod,
    options: &EngineOptions,
    mut batches: impl FnMut() -> I,
) -> Result<(BTreeMap<String, TensorRange>, usize), EngineError>
where
    I: Iterator<Item = (Vec<f32>, usize)>,
{
    let (graph, names) = calibration_graph(onnx).map_err(|e| invalid(e.to_string()))?;
    let library = if options.allow_download {
        ensure_onnxruntime()?
    } else {
        find_onnxruntime()?
    };
    let runtime = runtime(&library)?;
    let mut session = Session::builder(&runtime.environment)
        .and_then(|builder| -> ort::Result<Session> {
            builder
                .with_optimization_level(GraphOptimizationLevel::Level3)?
                .with_intra_threads(options.threads())?
                .commit_from_memory(&graph)
        })
        .map_err(|e| {
            invalid(format!(
                "onnxruntime cannot load the calibration graph: {e}"
            ))
        })?;
    let input = session
        .inputs()
        .first()
        .ok_or_else(|| invalid("the graph has no input".to_owned()))?;
    let image = match input.dtype().tensor_shape().map(|shape| shape.to_vec()) {
        Some(dims) if dims.len() == 4 && dims[1..].iter().all(|&d| d > 0) => {
            [dims[1], dims[2], dims[3]].map(|d| d as usize)
        }
        other => {
            return Err(invalid(format!(
                "input `{}` should be [N, C, H, W] with fixed C, H, W, not {other:?}",
                input.name()
            )));
        }
    };
    let input = input.name().to_owned();
    let mut ranges: Vec<TensorRange> = vec![
        TensorRange {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        };
        names.len()
    ];
    let mut images = 0;
    each_run(
        &mut session,
        &input,
        image,
        &names,
        batches(),
        |index, values| {
            let range = &mut ranges[index];
            for &v in values {
                range.min = range.min.min(v);
                range.max = range.max.max(v);
            }
        },
        &mut images,
    )?;
    if images == 0 {
        return Err(invalid("no calibration photos could be read".to_owned()));
    }
    if let RangeMethod::Percentile(percentile) = method {
        let mut histograms: Vec<Histogram> = ranges.iter().map(|r| Histogram::new(*r)).collect();
        let mut again = 0;
        each_run(
            &mut session,
            &input,
            image,
            &names,
            batches(),
            |index, values| {
                histograms[index].add(values);
            },
            &mut again,
        )?;
        ranges = histograms
            .iter()
            .map(|histogram| histogram.percentile_range(percentile))
            .collect();
    }
    Ok((names.into_iter().zip(ranges).collect(), images))
}

/// Runs the calibration graph on every batch, in runs of [`IMAGES_PER_RUN`] images, and hands
/// each requested output's values to `visit(output index, values)`; counts the images.
fn each_run(
    session: &mut Session,
    input: &str,
    [channels, height, width]: [usize; 3],
    names: &[String],
    batches: impl Iterator<Item = (Vec<f32>, usize)>,
    mut visit: impl FnMut(usize, &[f32]),
    images: &mut usize,
) -> Result<(), EngineError> {
    let per_image = channels * height * width;
    for (values, count) in batches {
        if values.len() != count * per_image {
            return Err(EngineError::InputShape {
                got: values.len(),
                expected: count * per_image,
                batch: count,
                per_image,
            });
        }
        for run in values.chunks(IMAGES_PER_RUN * per_image) {
            let batch = run.len() / per_image;
            let tensor = TensorRef::from_array_view(([batch, channels, height, width], run))
                .map_err(failed)?;
            let outputs = session.run(ort::inputs![input => tensor]).map_err(failed)?;
            for (index, name) in names.iter().enumerate() {
                let value = outputs
                    .get(name)
                    .ok_or_else(|| failed(format!("the calibration graph has no `{name}`")))?;
                let (_, data) = value.try_extract_tensor::<f32>().map_err(failed)?;
                visit(index, data);
            }
            *images += batch;
        }
    }
    Ok(())
}

/// Counts of a tensor's values in [`BINS`] equal bins over its min..max range.
struct Histogram {
    range: TensorRange,
    counts: Vec<u64>,
}

impl Histogram {
    fn new(range: TensorRange) -> Self {
        Self {
            range,
            counts: vec![0; BINS],
        }
    }

    fn add(&mut self, values: &[f32]) {
        let width = self.range.max - self.range.min;
        if width.is_nan() || width <= 0.0 {
            return;
        }
        let per_unit = BINS as f32 / width;
        for &v in values {
            let bin = ((v - self.range.min) * per_unit) as usize;
            self.counts[bin.min(BINS - 1)] += 1;
        }
    }

    /// The range between the `100 − percentile` and `percentile` points, each end moved only
    /// inward; a tensor that never goes below zero keeps its exact lower end (usually 0).
    fn percentile_range(&self, percentile: f64) -> TensorRange {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return self.range;
        }
        let tail = ((1.0 - percentile / 100.0) * total as f64) as u64;
        let width = (self.range.max - self.range.min) / BINS as f32;
        let edge = |bin: usize| self.range.min + width * bin as f32;
        let mut seen = 0;
        let mut low = 0;
        for (bin, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen > tail {
                low = bin;
                break;
            }
        }
        let mut seen = 0;
        let mut high = BINS;
        for (bin, &count) in self.counts.iter().enumerate().rev() {
            seen += count;
            if seen > tail {
                high = bin + 1;
                break;
            }
        }
        let min = if self.range.min >= 0.0 {
            self.range.min
        } else {
            edge(low).min(0.0).max(self.range.min)
        };
        TensorRange {
            min,
            max: edge(high).min(self.range.max),
        }
    }
}

fn invalid(reason: String) -> EngineError {
    EngineError::InvalidModel {
        model: "int8 calibration".to_owned(),
        reason,
    }
}

fn failed(e: impl fmt::Display) -> EngineError {
    EngineError::Inference {
        engine: "ort",
        reason: format!("calibration: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precisions_parse_and_print() {
        assert_eq!("int8".parse(), Ok(Precision::Int8));
        assert_eq!("FP32".parse(), Ok(Precision::Fp32));
        assert_eq!("auto".parse(), Ok(Precision::Auto));
        assert_eq!(Precision::default(), Precision::Auto);
        assert!(
            "int4"
                .parse::<Precision>()
                .unwrap_err()
                .contains("auto, fp32, int8")
        );
        assert_eq!(Precision::Int8.to_string(), "int8");
    }

    #[test]
    fn range_methods_parse_and_print() {
        assert_eq!("minmax".parse(), Ok(RangeMethod::MinMax));
        assert_eq!("percentile".parse(), Ok(RangeMethod::Percentile(99.99)));
        assert_eq!("percentile-99.9".parse(), Ok(RangeMethod::Percentile(99.9)));
        assert!("percentile-100".parse::<RangeMethod>().is_err());
        assert!("entropy".parse::<RangeMethod>().is_err());
        assert_eq!(RangeMethod::Percentile(99.9).to_string(), "percentile-99.9");
    }

    #[test]
    fn percentiles_drop_rare_outliers_but_keep_a_zero_floor() {
        // 100,000 values spread over 0..1, and ten outliers at 50.
        let mut values: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0).collect();
        values.extend([50.0; 10]);
        let mut histogram = Histogram::new(TensorRange {
            min: 0.0,
            max: 50.0,
        });
        histogram.add(&values);
        let range = histogram.percentile_range(99.99);
        assert_eq!(range.min, 0.0);
        assert!(range.max > 0.98 && range.max < 1.05, "{range:?}");
        // With a negative tail, the lower end moves in too.
        let mut values: Vec<f32> = (0..100_000).map(|i| i as f32 / 50_000.0 - 1.0).collect();
        values.extend([-40.0; 10]);
        let mut histogram = Histogram::new(TensorRange {
            min: -40.0,
            max: 1.0,
        });
        histogram.add(&values);
        let range = histogram.percentile_range(99.99);
        assert!(range.min < -0.95 && range.min > -1.05, "{range:?}");
        // Min/max is the 100th percentile (up to the bin edges' rounding).
        let full = histogram.percentile_range(100.0);
        assert_eq!(full.min, -40.0);
        assert!((full.max - 1.0).abs() < 1e-4, "{full:?}");
    }
}
