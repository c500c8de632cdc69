//! Runs the test S3 server for a whole test run: `.ci/run` starts this in the background, sources
//! the env file it writes, runs the tests and stops it by PID (SIGTERM), which stops SeaweedFS.

use anyhow::{Context, Result};
use bestiary_testkit::SeaweedFs;

fn main() -> Result<()> {
    let env_file = std::env::args()
        .nth(1)
        .context("usage: seaweedfs <env-file-to-write>")?;
    let server = SeaweedFs::start("bestiary-test")?;
    let exports = format!(
        "{}export BESTIARY_TEST_SEAWEEDFS_PID={}\n",
        server.env.shell_exports(),
        server.pid()
    );
    // Written whole then renamed, so the waiting script never reads half a file.
    let partial = format!("{env_file}.partial");
    std::fs::write(&partial, exports)?;
    std::fs::rename(&partial, &env_file)?;
    eprintln!(
        "SeaweedFS ready at {} (bucket {})",
        server.env.endpoint, server.env.bucket
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    drop(server);
    eprintln!("SeaweedFS stopped");
    Ok(())
}
