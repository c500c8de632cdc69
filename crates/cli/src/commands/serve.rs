//! `bestiary serve`: turns the command line into a server configuration, starts it, loads the
//! model and runs until SIGTERM or Ctrl-C has drained the in-flight requests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bestiary_dataset::decode::DecodeLimits;
use bestiary_serve::{
    BatchEnvironment, EngineSettings, SAGEMAKER_MODEL_DIR, ServeConfig, Server, collect_keys,
    detect_sagemaker, model_in_artifact,
};

use crate::args::{GlobalArgs, ServeArgs};

pub async fn serve(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let sagemaker = detect_sagemaker();
    let addr = SocketAddr::new(
        args.host
            .or(sagemaker.map(|a| a.ip()))
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        args.port
            .or(sagemaker.map(|a| a.port()))
            .unwrap_or(bestiary_serve::SAGEMAKER_DEFAULT_PORT),
    );
    let key_file = match &args.api_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API key file {}", path.display()))?,
        ),
        None => None,
    };
    let api_keys = collect_keys(&args.api_key, key_file.as_deref());
    if args.api_key_file.is_some() && api_keys.is_empty() {
        anyhow::bail!("the API key file holds no key");
    }
    let mut config = ServeConfig {
        addr,
        max_batch_size: args.max_batch_size,
        max_batch_delay: Duration::from_millis(args.max_batch_delay_ms),
        max_queue: args.max_queue,
        max_concurrent_requests: args.max_concurrent_requests,
        max_body_bytes: args.max_body_mb.saturating_mul(1024 * 1024),
        max_connections: args.max_connections,
        header_read_timeout: seconds("--header-read-timeout", args.header_read_timeout)?,
        request_timeout: seconds("--request-timeout", args.request_timeout)?,
        shutdown_timeout: seconds("--shutdown-timeout", args.shutdown_timeout)?,
        api_keys,
        open_admin: args.open_admin,
        cors_allow_origins: args.cors_allow_origin.clone(),
        model_poll_interval: if args.model_poll_interval == 0.0 {
            None
        } else {
            Some(seconds("--model-poll-interval", args.model_poll_interval)?)
        },
        cost_per_vcpu_hour: args.cost_per_vcpu_hour,
        cloudwatch_emf_interval: if args.cloudwatch_emf {
            Some(seconds(
                "--cloudwatch-emf-interval",
                args.cloudwatch_emf_interval,
            )?)
        } else {
            None
        },
        bucket: args.bucket.clone(),
        allowed_uri_prefixes: args.allow_uri_prefix.clone(),
        store: global.store_options(),
        decode_limits: DecodeLimits {
            max_pixels: (args.max_megapixels * 1e6) as u64,
            ..DecodeLimits::default()
        },
        default_top_k: args.top_k,
        keep_label_when_unknown: args.keep_label_when_unknown,
        sagemaker_batch: BatchEnvironment::default(),
    };
    // SageMaker hosting: the unpacked model artifact is the model unless --model names one,
    // and batch transform's variables set what the server must accept.
    let mut model_url = args.model.clone();
    if sagemaker.is_some() {
        let env = std::env::vars().collect();
        BatchEnvironment::from_env(&env)
            .map_err(anyhow::Error::msg)?
            .apply(&mut config);
        if model_url.is_none() {
            model_url = model_in_artifact(std::path::Path::new(SAGEMAKER_MODEL_DIR))
                .map_err(anyhow::Error::msg)?;
        }
    }
    let keys = config.api_keys.len();
    let engine = EngineSettings {
        kind: args.engine,
        options: bestiary_engine::EngineOptions {
            precision: args.precision,
            ..bestiary_engine::EngineOptions::for_throughput(
                args.engine,
                args.threads,
                args.inference_workers,
            )
        },
    };
    let server = Server::start(config, engine).await?;
    server.handle_signals()?;
    let where_from = if sagemaker.is_some() {
        " (SageMaker container)"
    } else {
        ""
    };
    println!(
        "listening on http://{}{where_from}; docs at /docs{}",
        server.local_addr(),
        if keys > 0 {
            format!(", {keys} API key(s) required")
        } else {
            String::new()
        }
    );
    let model = match server.load_model(model_url.as_deref()).await {
        Ok(model) => model,
        Err(error) => {
            server.shutdown().await?;
            return Err(error).context("cannot load the model");
        }
    };
    let source = server
        .state()
        .models
        .source()
        .map_or_else(|| model.model.source.clone(), |s| s.describe());
    println!(
        "serving {} {} ({}, {} classes, {} engine) from {source}",
        model.name(),
        model.version(),
        model.model.metadata.architecture,
        model.model.metadata.classes.len(),
        model.engine(),
    );
    server.wait().await?;
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, got {value}"))
}
