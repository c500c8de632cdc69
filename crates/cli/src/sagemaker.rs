//! Running as a SageMaker training job: turns `/opt/ml` (hyperparameters, input channels, model
//! and checkpoint folders) into the `bestiary train` command line, and reports failures where
//! SageMaker reads them.
//!
//! SageMaker starts a training container as `IMAGE train`. When `bestiary` is called with exactly
//! that argument and `/opt/ml/input/config/hyperparameters.json` exists, the job's settings
//! become ordinary flags, so they are checked (and explained) exactly as on the command line:
//! - every hyperparameter is a `train` flag, named with `-` or `_` (`batch_size`, `batch-size`);
//!   values arrive as strings, and the Python SDK JSON-encodes them (`"\"adam\""`), so a value
//!   that is a JSON string is unwrapped; `true`/`false` switch plain flags on or off. Names
//!   starting with `sagemaker_` belong to SageMaker's own toolkits and are ignored; any other
//!   unknown name is an error that lists them;
//! - the `training` channel is `--data` (the folder, or the one manifest/CSV file in it) and a
//!   `validation` channel `--validation`;
//! - versions go to `/opt/ml/model` (uploaded as `model.tar.gz`, served by `bestiary serve` from
//!   the unpacked folder), checkpoints to `/opt/ml/checkpoints` (synced to S3 by SageMaker, and
//!   resumed from when a spot job restarts), one metric line per epoch goes to stdout for the
//!   job's `MetricDefinitions`, and the reason of a failure to `/opt/ml/output/failure`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The root every SageMaker container sees.
pub const OPT_ML: &str = "/opt/ml";

/// Flags the job layout sets itself: a hyperparameter may not override them.
const SET_BY_THE_JOB: [&str; 4] = ["data", "out", "checkpoint-dir", "resume"];

/// SageMaker's training-job folder.
#[derive(Debug, Clone)]
pub struct TrainingJob {
    root: PathBuf,
}

impl TrainingJob {
    /// The job, when `args` are SageMaker's `train` (exactly) and `root` has its configuration.
    pub fn detect(args: &[OsString], root: &Path) -> Option<Self> {
        let is_bare_train = args.len() == 2 && args[1] == "train";
        (is_bare_train && root.join("input/config/hyperparameters.json").is_file()).then(|| Self {
            root: root.to_path_buf(),
        })
    }

    /// The full command line of the job's training run.
    ///
    /// # Errors
    /// A message for SageMaker's failure reason: unreadable configuration, unknown
    /// hyperparameters, a missing training channel, an unsupported input mode.
    pub fn arguments(
        &self,
        program: &OsString,
        train: &clap::Command,
    ) -> Result<Vec<OsString>, String> {
        let config = self.root.join("input/config");
        let hyperparameters = read_json(&config.join("hyperparameters.json"))?;
        let channels = match config.join("inputdataconfig.json") {
            path if path.is_file() => read_json(&path)?,
            _ => Value::Object(Default::default()),
        };
        let data_root = self.root.join("input/data");
        let channel = |name: &str| -> Result<Option<String>, String> {
            if let Some(mode) = channels
                .get(name)
                .and_then(|c| c.get("TrainingInputMode"))
                .and_then(Value::as_str)
                && mode.eq_ignore_ascii_case("pipe")
            {
                return Err(format!(
                    "channel {name}: Pipe input mode is not supported; use File or FastFile"
                ));
            }
            let folder = data_root.join(name);
            Ok(folder.is_dir().then(|| dataset_url(&folder)))
        };
        let data = match (channel("training")?, channel("train")?) {
            (Some(data), _) | (None, Some(data)) => data,
            (None, None) => {
                return Err(format!(
                    "no training channel: expected the photos in {}/training (name the \
                     channel `training` in the job's InputDataConfig)",
                    data_root.display()
                ));
            }
        };
        let checkpoints = self.root.join("checkpoints");
        std::fs::create_dir_all(&checkpoints)
            .map_err(|e| format!("cannot create {}: {e}", checkpoints.display()))?;
        let mut args: Vec<OsString> = vec![program.clone(), "train".into()];
        let mut push = |flag: &str, value: String| {
            args.push(format!("--{flag}").into());
            args.push(value.into());
        };
        push("data", data);
        if let Some(validation) = channel("validation")? {
            push("validation", validation);
        }
        push(
            "out",
            self.root.join("model").to_string_lossy().into_owned(),
        );
        push("checkpoint-dir", checkpoints.to_string_lossy().into_owned());
        push("resume", "auto".into());
        args.push("--metric-lines".into());
        args.extend(
            hyperparameter_arguments(&hyperparameters, train)?
                .into_iter()
                .map(OsString::from),
        );
        Ok(args)
    }

    /// Writes `message` where SageMaker takes a failed job's reason from.
    pub fn report_failure(&self, message: &str) {
        let output = self.root.join("output");
        // SageMaker shows the first 1024 characters as the job's FailureReason.
        let written = std::fs::create_dir_all(&output)
            .and_then(|()| std::fs::write(output.join("failure"), message));
        if let Err(error) = written {
            eprintln!("cannot write {}/failure: {error}", output.display());
        }
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// A channel folder as a dataset URL: the folder (one folder per class, or train/validation),
/// or the manifest or CSV file when that is all it holds.
fn dataset_url(folder: &Path) -> String {
    let entries: Vec<PathBuf> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    let is_listing = |p: &PathBuf| {
        p.is_file()
            && p.extension().is_some_and(|e| {
                matches!(e.to_string_lossy().as_ref(), "jsonl" | "manifest" | "csv")
            })
    };
    match entries.as_slice() {
        [only] if is_listing(only) => only.to_string_lossy().into_owned(),
        _ => folder.to_string_lossy().into_owned(),
    }
}

/// `--flag value` pairs for the hyperparameters, checked against the `train` command's flags.
pub fn hyperparameter_arguments(
    hyperparameters: &Value,
    train: &clap::Command,
) -> Result<Vec<String>, String> {
    let Value::Object(entries) = hyperparameters else {
        return Err("hyperparameters.json must hold a JSON object".into());
    };
    let mut names: Vec<&String> = entries.keys().collect();
    names.sort();
    let (mut args, mut unknown, mut reserved) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        let flag = name.trim().to_ascii_lowercase().replace('_', "-");
        if flag.starts_with("sagemaker-") {
            continue;
        }
        if SET_BY_THE_JOB.contains(&flag.as_str()) {
            reserved.push(name.clone());
            continue;
        }
        let Some(arg) = train
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()))
        else {
            unknown.push(name.clone());
            continue;
        };
        let value = plain_value(&entries[name]);
        if arg.get_action().takes_values() {
            args.push(format!("--{flag}={value}"));
        } else {
            match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => args.push(format!("--{flag}")),
                "false" | "0" | "no" | "" => {}
                _ => {
                    return Err(format!(
                        "hyperparameter {name} is on or off: true or false, got {value:?}"
                    ));
                }
            }
        }
    }
    if !unknown.is_empty() {
        let mut known: Vec<&str> = train
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !SET_BY_THE_JOB.contains(l) && *l != "help")
            .collect();
        known.sort_unstable();
        return Err(format!(
            "unknown hyperparameter(s): {}; the train flags are: {}",
            unknown.join(", "),
            known.join(", ")
        ));
    }
    if !reserved.is_empty() {
        return Err(format!(
            "hyperparameter(s) {} are set by the job itself (channels, /opt/ml/model, \
             /opt/ml/checkpoints)",
            reserved.join(", ")
        ));
    }
    Ok(args)
}

/// A hyperparameter's value as text: SageMaker sends strings, the Python SDK JSON-encodes them
/// first (`"\"adam\""`), hand-written JSON may hold numbers or booleans.
fn plain_value(value: &Value) -> String {
    match value {
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::String(inner)) => inner,
            _ => text.clone(),
        },
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    fn train_command() -> clap::Command {
        crate::args::Cli::command()
            .find_subcommand("train")
            .expect("train exists")
            .clone()
    }

    #[test]
    fn hyperparameters_become_flags_however_sagemaker_encodes_them() {
        let hyperparameters = serde_json::json!({
            "optimizer": "\"adam\"",
            "lr": "0.01",
            "batch_size": "16",
            "epochs": 3,
            "augment": "\"false\"",
            "balance-classes": "true",
            "json": "false",
            "sagemaker_program": "\"ignored.py\"",
        });
        let args = hyperparameter_arguments(&hyperparameters, &train_command()).unwrap();
        assert_eq!(
            args,
            [
                "--augment=false",
                "--balance-classes",
                "--batch-size=16",
                "--epochs=3",
                "--lr=0.01",
                "--optimizer=adam",
            ]
        );
    }

    #[test]
    fn unknown_and_reserved_hyperparameters_are_named() {
        let error = hyperparameter_arguments(
            &serde_json::json!({"learning_rate": "0.1", "epochz": "3", "lr": "0.1"}),
            &train_command(),
        )
        .unwrap_err();
        assert!(
            error.starts_with("unknown hyperparameter(s): epochz, learning_rate;"),
            "{error}"
        );
        assert!(error.contains("lr"), "{error}");
        let error =
            hyperparameter_arguments(&serde_json::json!({"out": "/elsewhere"}), &train_command())
                .unwrap_err();
        assert!(error.contains("out are set by the job"), "{error}");
        let error =
            hyperparameter_arguments(&serde_json::json!({"json": "maybe"}), &train_command())
                .unwrap_err();
        assert!(error.contains("true or false"), "{error}");
    }

    #[test]
    fn the_job_layout_becomes_a_train_command_line() {
        let root = tempfile::tempdir().unwrap();
        let program = OsString::from("bestiary");
        let bare = [program.clone(), "train".into()];
        assert!(TrainingJob::detect(&bare, root.path()).is_none());
        let config = root.path().join("input/config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("hyperparameters.json"), r#"{"epochs": "2"}"#).unwrap();
        std::fs::write(
            config.join("inputdataconfig.json"),
            r#"{"training": {"TrainingInputMode": "File"}}"#,
        )
        .unwrap();
        // Only SageMaker's bare `train` is a job; a user's own command line is left alone.
        let with_flags = [program.clone(), "train".into(), "--data".into()];
        assert!(TrainingJob::detect(&with_flags, root.path()).is_none());
        let job = TrainingJob::detect(&bare, root.path()).unwrap();

        let error = job.arguments(&program, &train_command()).unwrap_err();
        assert!(error.contains("no training channel"), "{error}");

        let training = root.path().join("input/data/training");
        std::fs::create_dir_all(training.join("cat")).unwrap();
        let args = job.arguments(&program, &train_command()).unwrap();
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = |s: &str| root.path().join(s).to_string_lossy().into_owned();
        assert_eq!(
            text,
            [
                "bestiary".to_string(),
                "train".into(),
                "--data".into(),
                at("input/data/training"),
                "--out".into(),
                at("model"),
                "--checkpoint-dir".into(),
                at("checkpoints"),
                "--resume".into(),
                "auto".into(),
                "--metric-lines".into(),
                "--epochs=2".into(),
            ]
        );
        assert!(root.path().join("checkpoints").is_dir());
        // The whole command line parses as the CLI's own.
        crate::args::Cli::try_parse_from(&args).expect("a valid command line");

        // A channel holding one manifest is that manifest; a Pipe channel is refused.
        std::fs::remove_dir(training.join("cat")).unwrap();
        std::fs::write(training.join("photos.manifest"), "").unwrap();
        let args = job.arguments(&program, &train_command()).unwrap();
        assert_eq!(args[3], training.join("photos.manifest").into_os_string());
        std::fs::write(
            config.join("inputdataconfig.json"),
            r#"{"training": {"TrainingInputMode": "Pipe"}}"#,
        )
        .unwrap();
        assert!(
            job.arguments(&program, &train_command())
                .unwrap_err()
                .contains("Pipe")
        );

        job.report_failure("unknown hyperparameter(s): epochz");
        assert_eq!(
            std::fs::read_to_string(root.path().join("output/failure")).unwrap(),
            "unknown hyperparameter(s): epochz"
        );
    }
}
