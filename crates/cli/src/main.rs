//! `bestiary`: the command-line entry point; parses arguments and runs one command.

mod allocator;
mod args;
mod commands;
mod progress;
mod sagemaker;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::args::{BenchCommand, Cli, Command, DatasetCommand, LogFormat};
use crate::sagemaker::TrainingJob;

fn main() -> ExitCode {
    allocator::tune_malloc();
    let mut args: Vec<OsString> = std::env::args_os().collect();
    // A SageMaker training job runs `IMAGE train`: its settings come from /opt/ml.
    let job = TrainingJob::detect(&args, Path::new(sagemaker::OPT_ML));
    if let Some(job) = &job {
        let command = Cli::command();
        let train = command.find_subcommand("train").expect("train exists");
        match job.arguments(&args[0], train) {
            Ok(job_args) => args = job_args,
            Err(message) => {
                job.report_failure(&message);
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => {
            if let Some(job) = &job {
                job.report_failure(&error.render().to_string());
            }
            error.exit()
        }
    };
    init_logging(cli.global.log_format, cli.global.quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bestiary-io")
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(error) => {
            if let Some(job) = &job {
                job.report_failure(&format!("{error:#}"));
            }
            eprintln!("error: {error:#}");
            failure_status(&error)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = &cli.global;
    match cli.command {
        Command::Dataset(DatasetCommand::Inspect(args)) => {
            commands::dataset::inspect(global, args).await
        }
        Command::Dataset(DatasetCommand::Audit(args)) => {
            commands::dataset::audit(global, *args).await
        }
        Command::Bench(BenchCommand::Loader(args)) => commands::bench::loader(global, args).await,
        Command::Bench(BenchCommand::Engine(args)) => commands::bench::engine(global, args).await,
        Command::Bench(BenchCommand::Conv(args)) => commands::bench::conv(args).await,
        Command::Train(args) => commands::train::train(global, *args).await,
        Command::Eval(args) => commands::eval::eval(global, args).await,
        Command::Export(args) => commands::export::export(global, args).await,
        Command::Explain(args) => commands::explain::explain(global, args).await,
        Command::Import(args) => commands::import::import(global, args).await,
        Command::Package(args) => commands::package::package(global, args).await,
        Command::Serve(args) => commands::serve::serve(global, *args).await,
        Command::Classify(args) => commands::classify::classify(global, *args).await,
        Command::Watch(args) => commands::watch::watch(global, *args).await,
    }
}

/// The exit status of a failed command: 3 when running it again cannot help (no photos, a bad
/// manifest or checkpoint, invalid data, a missing bucket, denied access — what a Kubernetes
/// podFailurePolicy should not retry), 1 for everything else (outages after retries, I/O).
fn failure_status(error: &anyhow::Error) -> ExitCode {
    use bestiary_dataset::DatasetError;
    use bestiary_networks::NetworkError;
    use bestiary_storage::StorageError;
    use bestiary_train::TrainError;
    let permanent = error.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<StorageError>() {
            e.is_permanent()
        } else if let Some(e) = cause.downcast_ref::<DatasetError>() {
            match e {
                DatasetError::NoImages { .. } | DatasetError::BadManifest { .. } => true,
                DatasetError::Storage(storage) => storage.is_permanent(),
                _ => false,
            }
        } else if let Some(e) = cause.downcast_ref::<TrainError>() {
            match e {
                TrainError::Invalid(_) | TrainError::Checkpoint(_) => true,
                TrainError::Storage(storage) => storage.is_permanent(),
                _ => false,
            }
        } else if let Some(e) = cause.downcast_ref::<NetworkError>() {
            // `bestiary export` loads its model with bestiary-networks: the same rule.
            match e {
                NetworkError::Invalid(_) | NetworkError::Checkpoint(_) => true,
                NetworkError::Storage(storage) => storage.is_permanent(),
                _ => false,
            }
        } else if let Some(e) = cause.downcast_ref::<bestiary_bulk::BulkError>() {
            e.is_permanent()
        } else {
            false
        }
    });
    if permanent {
        ExitCode::from(commands::classify::BAD_INPUT)
    } else {
        ExitCode::FAILURE
    }
}

fn init_logging(format: LogFormat, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BESTIARY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}
