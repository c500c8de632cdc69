//! Progress bars on stderr, hidden when quiet, when printing JSON, or when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `total` steps, or a spinner counting up when the total is unknown.
pub fn bar(total: Option<u64>, message: &str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                .expect("progress template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} {per_sec}")
                .expect("spinner template"),
        ),
    };
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
