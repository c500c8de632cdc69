//! The onnxruntime engine: finds (or fetches) the pinned `libonnxruntime.so.1.32.0` from the
//! PyPI wheel, loads it once per process with `ort`, and runs a model's ONNX graph.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bestiary_model::onnx::CLASS_ACTIVATION;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::TensorRef;

use crate::engine::{Engine, EngineKind, EngineOptions, check_input};
use crate::error::EngineError;
use crate::explain::ClassActivation;

/// The onnxruntime release whose library is loaded.
pub const ONNXRUNTIME_VERSION: &str = "1.32.0";
/// The library's file name: the wheel ships only this versioned name.
pub const ONNXRUNTIME_LIBRARY: &str = "libonnxruntime.so.1.32.0";
/// The environment variable naming the library explicitly (as `ort` itself reads it).
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";

/// The wheel whose library [`ensure_onnxruntime`] extracts: CPython 3.11, manylinux_2_28,
/// x86_64. The library inside is the same C API whatever the Python, so one build is pinned.
const WHEEL_PACKAGE: &str = "onnxruntime";
/// sha256 of `onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl`.
pub const ONNXRUNTIME_WHEEL_SHA256: &str =
    "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d";
/// pip arguments that select that wheel whatever the local interpreter is.
const WHEEL_PIP_ARGS: [&str; 12] = [
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    // A machine without network should fall back to tract quickly, not after pip's default
    // five retries of fifteen seconds each.
    "--retries",
    "1",
    "--timeout",
    "20",
];
/// The library's path inside the wheel.
const WHEEL_MEMBER: &str = "onnxruntime/capi/libonnxruntime.so.1.32.0";

const ENGINE: &str = "ort";

/// How to get the fast engine, for errors and warnings.
pub const ONNXRUNTIME_HINT: &str = "Run scripts/install-tools (it installs onnxruntime==1.32.0 into \
     .tools/venv), or set ORT_DYLIB_PATH to a libonnxruntime.so.1.32.0";

fn unavailable(reason: impl Into<String>) -> EngineError {
    EngineError::Unavailable {
        engine: ENGINE,
        reason: reason.into(),
        hint: ONNXRUNTIME_HINT.to_owned(),
    }
}

/// Where a downloaded library is kept: `onnxruntime-1.32.0/` in Bestiary's cache folder
/// (`$BESTIARY_CACHE_DIR`, else the user's cache folder + `bestiary`), beside the image cache.
pub fn onnxruntime_cache_dir() -> PathBuf {
    let images = bestiary_dataset::ImageCache::default_dir();
    images
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(images)
        .join(format!("onnxruntime-{ONNXRUNTIME_VERSION}"))
}

/// The library's possible places inside a `.tools` folder: a bare copy, or the wheel installed
/// into the project's virtual environment by `scripts/install-tools`.
fn tools_candidates(tools: &Path) -> Vec<PathBuf> {
    let mut candidates = vec![tools.join("onnxruntime").join(ONNXRUNTIME_LIBRARY)];
    let lib = tools.join("venv").join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("python3"))
        .map(|entry| entry.path())
        .collect();
    // Sorted so the choice never depends on the directory's listing order.
    pythons.sort();
    candidates.extend(pythons.into_iter().map(|python| {
        python
            .join("site-packages/onnxruntime/capi")
            .join(ONNXRUNTIME_LIBRARY)
    }));
    candidates
}

/// Every place searched, in order, when `ORT_DYLIB_PATH` is not set: `.tools` folders in the
/// current directory and the executable's directory and all their parents, then the cache.
fn search_path() -> Vec<PathBuf> {
    let mut starts = Vec::new();
    if let Ok(dir) = std::env::current_dir() {
        starts.push(dir);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        starts.push(dir);
    }
    let mut candidates = Vec::new();
    for start in &starts {
        for dir in start.ancestors() {
            let tools = dir.join(".tools");
            if tools.is_dir() {
                candidates.extend(tools_candidates(&tools));
            }
        }
    }
    candidates.push(onnxruntime_cache_dir().join(ONNXRUNTIME_LIBRARY));
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|path| seen.insert(path.clone()));
    candidates
}

/// The path `ORT_DYLIB_PATH` names, if set and not empty.
fn dylib_path_variable() -> Option<PathBuf> {
    std::env::var_os(ORT_DYLIB_PATH)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

/// The onnxruntime library to load, without downloading anything: `ORT_DYLIB_PATH` when set
/// (and then only it), else the project's `.tools` install, else the cache.
///
/// # Errors
/// [`EngineError::Unavailable`] naming the missing file, or every place searched.
pub fn find_onnxruntime() -> Result<PathBuf, EngineError> {
    if let Some(path) = dylib_path_variable() {
        // An explicit choice is never silently replaced by another library.
        return if path.is_file() {
            Ok(path)
        } else {
            Err(unavailable(format!(
                "{ORT_DYLIB_PATH}={} does not exist",
                path.display()
            )))
        };
    }
    let candidates = search_path();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            let searched: Vec<String> =
                candidates.iter().map(|p| p.display().to_string()).collect();
            unavailable(format!(
                "{ONNXRUNTIME_LIBRARY} was not found (searched {})",
                searched.join(", ")
            ))
        })
}

/// The onnxruntime library, downloading it when [`find_onnxruntime`] finds none: pip fetches
/// the pinned wheel (sha256-checked, see `bestiary_networks::wheel::fetch_wheel_with`) and only
/// the library is extracted into [`onnxruntime_cache_dir`], through a temporary file renamed
/// into place so that concurrent processes never see half a library.
///
/// # Errors
/// [`EngineError::Unavailable`] when `ORT_DYLIB_PATH` names a missing file (an explicit choice
/// is not overridden by a download), on platforms the pinned wheel does not serve, or when the
/// download or extraction fails.
pub fn ensure_onnxruntime() -> Result<PathBuf, EngineError> {
    let missing = match find_onnxruntime() {
        Ok(path) => return Ok(path),
        Err(error) if dylib_path_variable().is_some() => return Err(error),
        Err(error) => error,
    };
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err(unavailable(format!(
            "{missing}; the pinned onnxruntime wheel is for Linux x86_64 only"
        )));
    }
    tracing::info!(
        "onnxruntime {ONNXRUNTIME_VERSION} is not installed; downloading its PyPI wheel to extract the library"
    );
    let wheel = bestiary_networks::wheel::fetch_wheel_with(
        WHEEL_PACKAGE,
        ONNXRUNTIME_VERSION,
        ONNXRUNTIME_WHEEL_SHA256,
        &WHEEL_PIP_ARGS,
    )
    .map_err(|e| {
        unavailable(format!(
            "downloading onnxruntime=={ONNXRUNTIME_VERSION}: {e}"
        ))
    })?;
    let dir = onnxruntime_cache_dir();
    let path = extract_library(&wheel, &dir).map_err(|e| {
        unavailable(format!(
            "extracting {WHEEL_MEMBER} into {}: {e}",
            dir.display()
        ))
    })?;
    tracing::info!("onnxruntime library installed at {}", path.display());
    Ok(path)
}

/// Writes the wheel's library into `dir` atomically; returns its path.
fn extract_library(wheel: &[u8], dir: &Path) -> Result<PathBuf, String> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(wheel)).map_err(|e| e.to_string())?;
    let mut member = archive.by_name(WHEEL_MEMBER).map_err(|e| e.to_string())?;
    let mut file = tempfile::Builder::new()
        .prefix(".onnxruntime-")
        .tempfile_in(dir)
        .map_err(|e| e.to_string())?;
    std::io::copy(&mut member, &mut file).map_err(|e| e.to_string())?;
    file.flush().map_err(|e| e.to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // Readable by everyone like any installed library (temporary files start at 0600).
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    let path = dir.join(ONNXRUNTIME_LIBRARY);
    file.persist(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// The loaded library and the process's one onnxruntime environment.
pub(crate) struct Runtime {
    pub(crate) environment: Environment,
    library: PathBuf,
}

/// Set once the library has loaded. `ort` can load one library per process and build one
/// environment, so both live for the rest of the process; failures are not remembered, so a
/// later call (after an install) can still succeed.
static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

pub(crate) fn runtime(library: &Path) -> Result<Arc<Runtime>, EngineError> {
    let mut slot = RUNTIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(runtime) = slot.as_ref() {
        if runtime.library != library {
            tracing::debug!(
                "onnxruntime is already loaded from {}; {} is not loaded too",
                runtime.library.display(),
                library.display()
            );
        }
        return Ok(Arc::clone(runtime));
    }
    let absolute = std::path::absolute(library).unwrap_or_else(|_| library.to_path_buf());
    if !absolute.is_file() {
        return Err(unavailable(format!(
            "{} does not exist",
            absolute.display()
        )));
    }
    let environment = ort::init_from(&absolute)
        .map_err(|e| unavailable(format!("cannot load onnxruntime: {e}")))?
        .with_name("bestiary")
        .with_telemetry(false)
        .build()
        .map_err(|e| {
            unavailable(format!(
                "cannot start onnxruntime from {}: {e}",
                absolute.display()
            ))
        })?;
    let runtime = Arc::new(Runtime {
        environment,
        library: absolute,
    });
    *slot = Some(Arc::clone(&runtime));
    Ok(runtime)
}

/// Loads the onnxruntime library at `library` into this process (once; later calls reuse it).
///
/// # Errors
/// [`EngineError::Unavailable`] when the file is missing, is not onnxruntime, or is older than
/// the C API `ort` needs.
pub fn load_onnxruntime(library: &Path) -> Result<PathBuf, EngineError> {
    Ok(runtime(library)?.library.clone())
}

/// A session and the run options that fetch only the logits, used by one call at a time.
struct Runner {
    session: Session,
    options: RunOptions<HasSelectedOutputs>,
    /// Run options that fetch the logits and the class activation maps, for explanations;
    /// `None` when the graph has no maps.
    explain: Option<RunOptions<HasSelectedOutputs>>,
}

/// How long calls must not have overlapped before a call counts as alone.
const LONE_AFTER: Duration = Duration::from_millis(250);

/// Tells a call that runs alone from calls that overlap, so a lone call may take the wide
/// session. Under steady concurrent load there are gaps between calls too; a call that
/// starts in such a gap must not go wide, or its threads and the next narrow call's fight
/// over the cores (measured on 2 vCPUs: 300 → 250 req/s at 8 clients). So a call counts
/// as alone only when no other is running and none has overlapped for `lone_after`.
struct CallOverlap {
    running: AtomicUsize,
    /// When calls last overlapped, in milliseconds after `opened`; it starts at 0, so the
    /// first `lone_after` after opening counts as busy.
    last_overlap_ms: AtomicU64,
    opened: Instant,
    lone_after: Duration,
}

/// One call in progress; counted out when dropped, however the call ends.
struct Call<'a> {
    overlap: &'a CallOverlap,
    alone: bool,
}

impl CallOverlap {
    fn new(lone_after: Duration) -> Self {
        Self {
            running: AtomicUsize::new(0),
            last_overlap_ms: AtomicU64::new(0),
            opened: Instant::now(),
            lone_after,
        }
    }

    fn enter(&self) -> Call<'_> {
        let now_ms = self.opened.elapsed().as_millis() as u64;
        let alone = if self.running.fetch_add(1, Ordering::SeqCst) > 0 {
            self.last_overlap_ms.store(now_ms, Ordering::Relaxed);
            false
        } else {
            now_ms.saturating_sub(self.last_overlap_ms.load(Ordering::Relaxed))
                >= self.lone_after.as_millis() as u64
        };
        Call {
            overlap: self,
            alone,
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.overlap.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An ONNX graph in onnxruntime.
pub struct OrtEngine {
    /// One session per instance. `Session::run` takes `&mut self` (onnxruntime's allocators
    /// are not all thread-safe), so a call takes a free session, or queues for one.
    runners: Vec<Mutex<Runner>>,
    /// With several instances, one more session on all their threads together, for a call
    /// that runs alone: it then has every core to itself (on 2 vCPUs a lone image takes
    /// 2.2 ms instead of 4.2), while calls that overlap keep to single-threaded sessions
    /// that do not stall each other.
    wide: Option<Mutex<Runner>>,
    overlap: CallOverlap,
    /// Where a call that finds every session busy queues, in turn.
    next: AtomicUsize,
    input: String,
    output: String,
    /// The graph's class activation maps output, when it has one.
    class_activation: Option<String>,
    /// Channels, height and width of one image, from the graph.
    image: [usize; 3],
    threads: usize,
    library: PathBuf,
}

impl OrtEngine {
    /// `options.instances` sessions for the ONNX model `onnx`, with the library at `library`
    /// (see [`find_onnxruntime`] / [`ensure_onnxruntime`]), graph optimisation level 3 and
    /// `options.threads()` intra-op threads each.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when the library cannot load; [`EngineError::InvalidModel`]
    /// when onnxruntime rejects the graph or its input is not `[N, C, H, W]` float32.
    pub fn new(onnx: &[u8], library: &Path, options: &EngineOptions) -> Result<Self, EngineError> {
        let runtime = runtime(library)?;
        let invalid = |reason: String| EngineError::InvalidModel {
            model: "ONNX graph".to_owned(),
            reason,
        };
        let threads = options.threads();
        let instances = options.instances.max(1);
        let open_session = |threads: usize, spinning: bool| {
            Session::builder(&runtime.environment)
                .and_then(|builder| -> ort::Result<Session> {
                    builder
                        .with_optimization_level(GraphOptimizationLevel::Level3)?
                        .with_intra_threads(threads)?
                        .with_intra_op_spinning(spinning)?
                        .commit_from_memory(onnx)
                })
                .map_err(|e| invalid(format!("onnxruntime cannot load it: {e}")))
        };
        let session = open_session(threads, true)?;
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
        // The exported graphs also output probabilities and features; only logits are needed.
        let output = session
            .outputs()
            .iter()
            .find(|output| output.name() == "logits")
            .or_else(|| session.outputs().first())
            .ok_or_else(|| invalid("the graph has no output".to_owned()))?
            .name()
            .to_owned();
        let class_activation = session
            .outputs()
            .iter()
            .find(|output| output.name() == CLASS_ACTIVATION)
            .map(|output| output.name().to_owned());
        let runner = |session| -> Result<Mutex<Runner>, EngineError> {
            let selecting = |selector: OutputSelector| {
                RunOptions::new()
                    .map(|options| options.with_outputs(selector))
                    .map_err(|e| invalid(format!("run options: {e}")))
            };
            let options = selecting(OutputSelector::no_default().with(output.clone()))?;
            let explain = class_activation
                .as_ref()
                .map(|maps| {
                    selecting(
                        OutputSelector::no_default()
                            .with(output.clone())
                            .with(maps.clone()),
                    )
                })
                .transpose()?;
            Ok(Mutex::new(Runner {
                session,
                options,
                explain,
            }))
        };
        let mut runners = vec![runner(session)?];
        for _ in 1..instances {
            runners.push(runner(open_session(threads, true)?)?);
        }
        let wide = if instances > 1 {
            // Without spinning: a lone call's pool threads would otherwise keep spinning
            // between calls, taking the cores the next photo's decoding needs (measured at
            // 1 client: p99 11.9 ms spinning, 7.6–8.0 ms not, for 213 vs 190 req/s).
            Some(runner(open_session(threads * instances, false)?)?)
        } else {
            None
        };
        Ok(Self {
            runners,
            wide,
            overlap: CallOverlap::new(LONE_AFTER),
            next: AtomicUsize::new(0),
            input,
            output,
            class_activation,
            image,
            threads,
            library: runtime.library.clone(),
        })
    }

    /// The library this engine runs on.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Channels, height and width of one input image, as the graph declares them.
    pub fn image_shape(&self) -> [usize; 3] {
        self.image
    }

    /// The wide session for a call that runs alone, else a single-instance session no other
    /// call is using, else the next one in turn once it is free.
    fn free_runner(&self, alone: bool) -> std::sync::MutexGuard<'_, Runner> {
        if alone && let Some(wide) = &self.wide {
            match wide.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        for runner in &self.runners {
            match runner.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.runners.len();
        self.runners[turn]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn failed(e: impl std::fmt::Display) -> EngineError {
        EngineError::Inference {
            engine: ENGINE,
            reason: e.to_string(),
        }
    }
}

impl Engine for OrtEngine {
    fn infer(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, EngineError> {
        let [channels, height, width] = self.image;
        check_input(input, batch, channels * height * width)?;
        if batch == 0 {
            return Ok(Vec::new());
        }
        // A view of the caller's buffer: onnxruntime reads it in place, without a copy.
        let tensor = TensorRef::from_array_view(([batch, channels, height, width], input))
            .map_err(Self::failed)?;
        let call = self.overlap.enter();
        let mut runner = self.free_runner(call.alone);
        let Runner {
            session, options, ..
        } = &mut *runner;
        let outputs = session
            .run_with_options(ort::inputs![self.input.as_str() => tensor], options)
            .map_err(Self::failed)?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| Self::failed(format!("no `{}` output", self.output)))?;
        let (_, logits) = value.try_extract_tensor::<f32>().map_err(Self::failed)?;
        Ok(logits.to_vec())
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Ort
    }

    fn explain(&self, input: &[f32]) -> Result<ClassActivation, EngineError> {
        let [channels, height, width] = self.image;
        check_input(input, 1, channels * height * width)?;
        let Some(maps_name) = &self.class_activation else {
            return Err(EngineError::NoClassActivation {
                model: "its graph".to_owned(),
            });
        };
        let tensor = TensorRef::from_array_view(([1, channels, height, width], input))
            .map_err(Self::failed)?;
        // The same sessions as classification, so explanations share their concurrency.
        let call = self.overlap.enter();
        let mut runner = self.free_runner(call.alone);
        let Runner {
            session, explain, ..
        } = &mut *runner;
        let options = explain
            .as_ref()
            .ok_or_else(|| Self::failed("the session has no explanation run options"))?;
        let outputs = session
            .run_with_options(ort::inputs![self.input.as_str() => tensor], options)
            .map_err(Self::failed)?;
        let tensor_of = |name: &str| {
            let value = outputs
                .get(name)
                .ok_or_else(|| Self::failed(format!("no `{name}` output")))?;
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(Self::failed)?;
            Ok::<_, EngineError>((shape.to_vec(), data.to_vec()))
        };
        let (_, logits) = tensor_of(&self.output)?;
        let (shape, maps) = tensor_of(maps_name)?;
        let [_, _, map_height, map_width] = shape[..] else {
            return Err(Self::failed(format!(
                "`{maps_name}` has shape {shape:?}, not [1, classes, h, w]"
            )));
        };
        Ok(ClassActivation {
            logits,
            maps,
            height: map_height.max(0) as usize,
            width: map_width.max(0) as usize,
        })
    }

    fn explains(&self) -> bool {
        self.class_activation.is_some()
    }

    fn describe(&self) -> String {
        let sessions = match self.runners.len() {
            1 => String::new(),
            n => format!("{n} sessions × "),
        };
        let wide = if self.wide.is_some() {
            format!(
                ", one of {} threads for lone calls",
                self.threads * self.runners.len()
            )
        } else {
            String::new()
        };
        format!(
            "ort (onnxruntime from {}, {sessions}{} threads{wide})",
            self.library.display(),
            self.threads
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_alone_only_after_a_quiet_spell_without_overlap() {
        // Wide margins, so that a loaded machine pausing this thread cannot flip the answers.
        let quiet = Duration::from_millis(500);
        let overlap = CallOverlap::new(quiet);
        // Just opened: busy until the quiet spell has passed.
        assert!(!overlap.enter().alone);
        std::thread::sleep(quiet + Duration::from_millis(100));
        let first = overlap.enter();
        assert!(first.alone);
        // A call that starts while another runs overlaps it…
        assert!(!overlap.enter().alone);
        drop(first);
        // …and, even with nothing running now, the next calls are not alone until a quiet
        // spell has passed since that overlap.
        assert!(!overlap.enter().alone);
        std::thread::sleep(quiet + Duration::from_millis(100));
        assert!(overlap.enter().alone);
        assert_eq!(overlap.running.load(Ordering::SeqCst), 0);
    }
}
