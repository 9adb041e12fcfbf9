//! Shows the daemon's progress reports on stderr the way git shows its own: a line rewritten in
//! place, only for transfers that last more than a moment, ending with ", done.".

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use git_s3_proto::Progress;

/// Transfers shorter than this print nothing.
const SHOW_AFTER: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct ProgressDisplay {
    started: HashMap<String, Instant>,
}

impl ProgressDisplay {
    pub fn update(&mut self, progress: &Progress) {
        let started = *self.started.entry(progress.title.clone()).or_insert_with(Instant::now);
        let elapsed = started.elapsed();
        if elapsed < SHOW_AFTER {
            return;
        }
        let line = render(progress, elapsed);
        let mut stderr = std::io::stderr().lock();
        if progress.finished {
            let _ = writeln!(stderr, "\r{line}, done.");
            self.started.remove(&progress.title);
        } else {
            let _ = write!(stderr, "\r{line}");
        }
        let _ = stderr.flush();
    }
}

fn render(progress: &Progress, elapsed: Duration) -> String {
    let rate = progress.done_bytes as f64 / elapsed.as_secs_f64().max(0.001);
    // Transfers of many objects count them as git-lfs does ("50% (1/2), 10 MB"), bytes beside.
    if let Some(percent) = progress.done_objects.saturating_mul(100).checked_div(progress.total_objects) {
        let percent = percent.min(100);
        let bytes = match progress.total_bytes {
            0 => human_bytes(progress.done_bytes as f64),
            total => format!("{}/{}", human_bytes(progress.done_bytes as f64), human_bytes(total as f64)),
        };
        return format!(
            "{}: {percent:3}% ({}/{}), {bytes} | {}/s",
            progress.title,
            progress.done_objects,
            progress.total_objects,
            human_bytes(rate)
        );
    }
    if let Some(percent) = progress.done_bytes.saturating_mul(100).checked_div(progress.total_bytes) {
        let percent = percent.min(100);
        format!(
            "{}: {percent:3}% ({}/{}) | {}/s",
            progress.title,
            human_bytes(progress.done_bytes as f64),
            human_bytes(progress.total_bytes as f64),
            human_bytes(rate)
        )
    } else {
        format!("{}: {} | {}/s", progress.title, human_bytes(progress.done_bytes as f64), human_bytes(rate))
    }
}

/// Bytes as git prints them: `12.34 MiB`.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{value:.0} {}", UNITS[0]) } else { format!("{value:.2} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_git() {
        let p = Progress {
            title: "Receiving refs/heads/main".into(),
            done_bytes: 512 * 1024,
            total_bytes: 1024 * 1024,
            ..Default::default()
        };
        assert_eq!(
            render(&p, Duration::from_secs(2)),
            "Receiving refs/heads/main:  50% (512.00 KiB/1.00 MiB) | 256.00 KiB/s"
        );
        let many = Progress {
            title: "Downloading LFS objects".into(),
            done_bytes: 3 * 1024 * 1024,
            total_bytes: 4 * 1024 * 1024,
            done_objects: 150,
            total_objects: 200,
            finished: false,
        };
        assert_eq!(
            render(&many, Duration::from_secs(3)),
            "Downloading LFS objects:  75% (150/200), 3.00 MiB/4.00 MiB | 1.00 MiB/s"
        );
        assert_eq!(human_bytes(100.0), "100 bytes");
    }
}
