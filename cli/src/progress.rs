//! Progress of long admin commands (`drain --wait`, `rebalance --wait`,
//! `fsck`): an indicatif bar with the time left when stdout is a terminal,
//! the plain lines scripts and tests parse otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Where progress goes: a bar on a terminal, nothing extra otherwise (the
/// callers keep printing their plain lines when `bar()` is None).
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar counting up to `total` (items moved), with rate and time left.
    pub fn counter(total: u64, what: &str) -> Progress {
        Progress::bar(total, what, "{pos}/{len} {per_sec}")
    }

    /// A bar of bytes moved of `total`, with rate and time left.
    pub fn bytes(total: u64, what: &str) -> Progress {
        Progress::bar(total, what, "{bytes}/{total_bytes} {bytes_per_sec}")
    }

    /// A bar to `total` showing `amounts` (indicatif keys) and the time left.
    fn bar(total: u64, what: &str, amounts: &str) -> Progress {
        Progress::on_tty(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
            let template =
                format!("{{msg}} [{{elapsed_precise}}] {{wide_bar}} {amounts} ETA {{eta}}");
            b.set_style(ProgressStyle::with_template(&template).expect("template"));
            b.set_message(what.to_string());
            // Drawn at once, even if the work ends before the next update.
            b.tick();
            b
        })
    }

    /// A spinner for work whose size is unknown (the message says how far).
    pub fn spinner(what: &str) -> Progress {
        Progress::on_tty(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]")
                    .expect("template"),
            );
            b.set_message(what.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        })
    }

    fn on_tty(make: impl FnOnce() -> ProgressBar) -> Progress {
        Progress(std::io::stdout().is_terminal().then(make))
    }

    pub fn is_bar(&self) -> bool {
        self.0.is_some()
    }

    /// Items done of `total` (the total can grow while work goes on).
    pub fn set_progress(&self, pos: u64, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total.max(pos));
            b.set_position(pos);
        }
    }

    pub fn set_message(&self, msg: String) {
        if let Some(b) = &self.0 {
            b.set_message(msg);
        }
    }

    /// Removes the bar so the final plain line stands alone.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// About how many bytes rebalancing still has to move: what the live,
/// non-draining daemons hold above their mean (the MDS stops once the
/// fullest is within two chunks of the emptiest, `mds/src/repair.rs`).
pub fn rebalance_left(daemons: &[weft_proto::pb::ChunkdStatus], chunk_size: u64) -> u64 {
    let used: Vec<u64> = daemons
        .iter()
        .filter(|d| d.alive && !d.draining)
        .map(|d| d.used)
        .collect();
    let (Some(&max), Some(&min)) = (used.iter().max(), used.iter().min()) else {
        return 0;
    };
    if max - min <= 2 * chunk_size.max(1) {
        return 0;
    }
    let mean = used.iter().sum::<u64>() / used.len() as u64;
    used.iter().map(|u| u.saturating_sub(mean)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::pb::ChunkdStatus;

    fn d(used: u64, alive: bool, draining: bool) -> ChunkdStatus {
        ChunkdStatus {
            used,
            alive,
            draining,
            ..Default::default()
        }
    }

    #[test]
    fn rebalance_left_is_the_excess_over_the_mean_of_live_daemons() {
        const MIB: u64 = 1 << 20;
        let ds = [
            d(900 * MIB, true, false),
            d(100 * MIB, true, false),
            d(200 * MIB, true, false),
        ];
        // Mean 400: the fullest holds 500 above it.
        assert_eq!(rebalance_left(&ds, 4 * MIB), 500 * MIB);
        // Dead and draining daemons are not balanced onto.
        let ds = [
            d(900 * MIB, true, false),
            d(0, false, false),
            d(0, true, true),
            d(890 * MIB, true, false),
        ];
        assert_eq!(rebalance_left(&ds, 8 * MIB), 0);
        assert_eq!(rebalance_left(&[], 8 * MIB), 0);
    }
}
