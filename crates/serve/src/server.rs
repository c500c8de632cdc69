//! A running server: binding, loading the model, polling for new versions, signals, the EMF
//! writer, and a graceful shutdown that drains in-flight requests.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bestiary_engine::EngineError;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::batcher::{BatchSettings, Batcher};
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::input::{UriPolicy, UriReader};
use crate::model::{EngineSettings, ModelManager, ReloadOutcome, ServedModel};
use crate::routes;
use crate::state::{AppState, Shared};
use crate::usage::Usage;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid settings: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot open the bucket: {0}")]
    Bucket(#[from] bestiary_storage::StorageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A server listening on its address. Requests are answered from the start: with 503 until a
/// model is loaded, so orchestrators see it alive while it gets ready.
pub struct Server {
    state: AppState,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    serving: JoinHandle<std::io::Result<()>>,
    /// Poller, signal listener, EMF writer: stopped with the server.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Whether the pointer poller runs (loading a model again must not start a second one).
    polling: AtomicBool,
}

impl Server {
    /// Binds `config.addr` and starts answering.
    pub async fn start(config: ServeConfig, engine: EngineSettings) -> Result<Self, ServeError> {
        config.validate().map_err(ServeError::Config)?;
        // Installed before the first request so that no early figure is lost.
        crate::metrics::prometheus();
        let usage = Arc::new(Usage::new(config.cost_per_vcpu_hour));
        let batcher = Batcher::start(
            BatchSettings {
                max_batch_size: config.max_batch_size,
                max_batch_delay: config.max_batch_delay,
                max_queue: config.max_queue,
                inference_threads: engine.options.instances,
            },
            usage.clone(),
        )?;
        let policy = UriPolicy::new(
            &config.allowed_uri_prefixes,
            config.max_body_bytes,
            config.max_queue,
        )
        .map_err(ServeError::Config)?;
        let uris = UriReader::open(&config.bucket, &config.store, policy)?;
        let models = ModelManager::new(engine, config.store.clone(), config.decode_limits.clone())
            .keeping_labels_of_unknown(config.keep_label_when_unknown);
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr()?;
        let emf_interval = config.cloudwatch_emf_interval;
        let state = AppState::new(Shared {
            concurrency: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            decoding: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            config,
            models,
            batcher,
            usage,
            uris,
            gallery: Default::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let app = routes::router(state.clone());
        let limits = crate::connections::ConnectionLimits {
            max_connections: state.config.max_connections,
            header_read_timeout: state.config.header_read_timeout,
        };
        let serving = tokio::spawn(crate::connections::serve(listener, app, limits, stopped));
        let server = Self {
            state,
            addr,
            stop,
            serving,
            background: Mutex::new(Vec::new()),
            polling: AtomicBool::new(false),
        };
        if let Some(interval) = emf_interval {
            server.spawn_background(write_emf(server.state.clone(), interval));
        }
        Ok(server)
    }

    /// The address it listens on (with the port chosen when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Loads, warms and serves the model `url` names (`None`: the built-in model). A model
    /// that follows a `latest` pointer is then checked every poll interval.
    pub async fn load_model(&self, url: Option<&str>) -> Result<Arc<ServedModel>, EngineError> {
        let served = self.state.models.load(url).await?;
        self.state.usage.start_counting();
        let follows_latest = self
            .state
            .models
            .source()
            .is_some_and(|source| source.follows_latest());
        if follows_latest
            && let Some(interval) = self.state.config.model_poll_interval
            && !self.polling.swap(true, Ordering::Relaxed)
        {
            let state = self.state.clone();
            self.spawn_background(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    // Failures are logged and counted by `reload`; the old model keeps serving.
                    let _ = state.models.reload().await;
                }
            });
        }
        Ok(served)
    }

    /// Checks for a new model version now (what SIGHUP and `POST /admin/reload` do).
    pub async fn reload(&self) -> Result<ReloadOutcome, ApiError> {
        self.state.models.reload().await
    }

    /// SIGTERM and Ctrl-C start a graceful shutdown; SIGHUP reloads the model.
    pub fn handle_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let stop = self.stop.clone();
        let state = self.state.clone();
        self.spawn_background(async move {
            loop {
                tokio::select! {
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                    _ = hangup.recv() => {
                        tracing::info!("SIGHUP: checking for a new model version");
                        let _ = state.models.reload().await;
                    }
                }
            }
            tracing::info!("shutting down: finishing in-flight requests");
            stop.send_replace(true);
        });
        Ok(())
    }

    /// Stops accepting connections; requests already received are still answered.
    pub fn begin_shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Shuts down now and waits until in-flight requests are answered.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.begin_shutdown();
        self.wait().await
    }

    /// Waits until the server has been told to stop (a signal or [`begin_shutdown`]) and has
    /// drained: in-flight requests answered (for at most the shutdown timeout), queued images
    /// classified, the inference thread stopped.
    ///
    /// [`begin_shutdown`]: Server::begin_shutdown
    pub async fn wait(self) -> Result<(), ServeError> {
        let mut stopped = self.stop.subscribe();
        let _ = stopped.wait_for(|stop| *stop).await;
        let timeout = self.state.config.shutdown_timeout;
        let mut serving = self.serving;
        match tokio::time::timeout(timeout, &mut serving).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join_error)) => tracing::error!("the HTTP server stopped: {join_error}"),
            Err(_) => {
                tracing::warn!("requests still running after {timeout:?}; stopping anyway");
                serving.abort();
            }
        }
        for task in self
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.batcher.close())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    }

    fn spawn_background(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }
}

/// Writes one EMF line per interval to stdout while a model is served.
async fn write_emf(state: AppState, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    let mut previous = state.usage_report();
    loop {
        ticks.tick().await;
        let current = state.usage_report();
        if let Some(model) = state.models.current() {
            let record = crate::emf::emf_record(
                model.name(),
                model.version(),
                &previous,
                &current,
                SystemTime::now(),
            );
            let mut stdout = std::io::stdout().lock();
            // A closed stdout must not stop the server; the figures are also in /metrics.
            let _ = writeln!(stdout, "{record}").and_then(|()| stdout.flush());
        }
        previous = current;
    }
}
