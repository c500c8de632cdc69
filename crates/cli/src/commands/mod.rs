//! One module per subcommand.

pub mod bench;
pub mod dataset;
pub mod eval;
pub mod export;
pub mod import;
pub mod serve;
pub mod train;

use std::process::ExitCode;

use bestiary_dataset::Dataset;

use crate::args::{GlobalArgs, SplitArgs};
use crate::progress;

/// Exit status of a command that is not built yet, distinct from failures (1).
const NOT_BUILT: u8 = 3;

/// The answer of a command whose issue has not landed yet.
pub fn pending(command: &str, issue: u32) -> anyhow::Result<ExitCode> {
    eprintln!("bestiary {command}: not built yet (tracked in issue #{issue}).");
    Ok(ExitCode::from(NOT_BUILT))
}

/// Lists the dataset at `url`, with a spinner counting keys unless `hidden`.
pub async fn open_dataset(
    global: &GlobalArgs,
    url: &str,
    split: &SplitArgs,
    hidden: bool,
) -> anyhow::Result<Dataset> {
    let listing = progress::bar(None, "listing", hidden);
    let dataset = Dataset::open(url, &split.options(global)?, &|n| listing.set_position(n)).await?;
    listing.finish_and_clear();
    Ok(dataset)
}
