//! `bestiary import`: rebuilds a pretrained network from its public package as a model version.

use std::process::ExitCode;

use anyhow::bail;
use bestiary_model::ModelRepository;
use bestiary_train::import::import_efficientnet_lite0;

use crate::args::{GlobalArgs, ImportArgs};

pub async fn import(global: &GlobalArgs, args: ImportArgs) -> anyhow::Result<ExitCode> {
    if args.model != "efficientnet-lite0" {
        bail!(
            "cannot import '{}': the only importable model is efficientnet-lite0",
            args.model
        );
    }
    let repository = ModelRepository::open(&args.out, &global.store_options())?;
    let metadata =
        import_efficientnet_lite0(&repository, &args.name, args.wheel.as_deref()).await?;
    let folder = repository
        .store()
        .child(&format!("{}/{}", metadata.name, metadata.version))?;
    println!("{}", folder.url().display());
    Ok(ExitCode::SUCCESS)
}
