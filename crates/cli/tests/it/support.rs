//! What the CLI tests share: running the binary, reading its output, and training the tiny
//! two-class model most of them start from.

use std::process::{Command, Output};

/// Runs `bestiary` with `args` and the extra variables `env`; an `AWS_ENDPOINT_URL` of the
/// developer's shell never reaches it.
pub(crate) fn bestiary_with(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bestiary"));
    command.args(args).env_remove("AWS_ENDPOINT_URL");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run bestiary")
}

pub(crate) fn bestiary(args: &[&str]) -> Output {
    bestiary_with(args, &[])
}

/// The standard output of a run that must have succeeded (else its standard error).
pub(crate) fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// `bestiary train` of a model small enough to train in seconds (seed CNN 8 channels wide and 2
/// blocks deep, 32 px, batch 8) on the photos of `data`, stored as `<models>/<name>`, then
/// `extra` arguments.
pub(crate) fn train_tiny(
    data: &str,
    models: &str,
    cache: &str,
    name: &str,
    epochs: &str,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "train",
        "--data",
        data,
        "--out",
        models,
        "--name",
        name,
        "--width",
        "8",
        "--depth",
        "2",
        "--image-size",
        "32",
        "--epochs",
        epochs,
        "--batch-size",
        "8",
        "--quiet",
        "--cache-dir",
        cache,
    ];
    args.extend_from_slice(extra);
    bestiary(&args)
}
