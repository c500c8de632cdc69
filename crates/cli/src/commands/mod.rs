//! One module per subcommand.

pub mod bench;
pub mod classify;
pub mod dataset;
pub mod eval;
pub mod explain;
pub mod export;
pub mod import;
pub mod int8;
pub mod package;
pub mod serve;
pub mod train;
pub mod watch;

use bestiary_dataset::Dataset;

use crate::args::{GlobalArgs, SplitArgs};
use crate::progress;

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
