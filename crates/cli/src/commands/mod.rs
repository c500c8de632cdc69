//! One module per subcommand.

pub mod bench;
pub mod dataset;
pub mod eval;
pub mod train;

use std::process::ExitCode;

/// Exit status of a command that is not built yet, distinct from failures (1).
const NOT_BUILT: u8 = 3;

/// The answer of a command whose issue has not landed yet.
pub fn pending(command: &str, issue: u32) -> anyhow::Result<ExitCode> {
    eprintln!("bestiary {command}: not built yet (tracked in issue #{issue}).");
    Ok(ExitCode::from(NOT_BUILT))
}
