//! Progress and messages for the user, sent from an operation to its client as they happen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often a running transfer reports.
const PROGRESS_PERIOD: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Progress { title: String, done_bytes: u64, total_bytes: u64, finished: bool },
    Message(String),
}

/// Where an operation's events go, and how it learns that its client went away (Ctrl-C, a
/// killed git). Progress is dropped when the client reads slowly; messages are not. Every
/// meter's bytes also add up in `total`, which `status` shows.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Event>,
    total: Arc<AtomicU64>,
    /// Whether the client shows progress at all (git's `option progress`).
    progress: bool,
    client_gone: CancellationToken,
}

/// What an operation given up because its client went away reports, to nobody but the log.
pub const CANCELLED: &str = "cancelled: the client went away";

impl Events {
    pub fn channel(total: Arc<AtomicU64>, progress: bool) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(64);
        (Self { tx, total, progress, client_gone: CancellationToken::new() }, rx)
    }

    /// Tells the operation that nobody waits for it any more.
    pub fn client_left(&self) {
        self.client_gone.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.client_gone.is_cancelled()
    }

    /// Resolves once the client went away.
    pub async fn cancelled(&self) {
        self.client_gone.cancelled().await
    }

    /// Runs `work` unless the client goes away first; then `work` is dropped (and with it its
    /// transfers, child processes and temporary files) and `None` comes back.
    pub async fn unless_cancelled<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            result = work => Some(result),
            () = self.cancelled() => None,
        }
    }

    pub async fn message(&self, text: impl Into<String>) {
        // A client that went away no longer needs messages; the operation goes on.
        let _ = self.tx.send(Event::Message(text.into())).await;
    }

    /// Starts counting bytes for one transfer; reports until finished or dropped.
    pub fn meter(&self, title: impl Into<String>, total_bytes: u64) -> Meter {
        self.meter_into(title.into(), total_bytes, self.total.clone())
    }

    /// A meter whose bytes the user sees but the operation's total leaves out: a transfer in the
    /// other direction (a push that first downloads what it builds on).
    pub fn side_meter(&self, title: impl Into<String>, total_bytes: u64) -> Meter {
        self.meter_into(title.into(), total_bytes, Arc::new(AtomicU64::new(0)))
    }

    fn meter_into(&self, title: String, total_bytes: u64, total: Arc<AtomicU64>) -> Meter {
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = Counted { bytes: bytes.clone(), added: Arc::new(AtomicU64::new(0)), total };
        let ticker = tokio::spawn(tick(self.tx.clone(), title.clone(), counted.clone(), total_bytes, self.progress));
        Meter { bytes, counted, ticker, title, total_bytes, tx: self.tx.clone(), progress: self.progress }
    }
}

/// A meter's bytes, and how many of them the operation's total already has.
#[derive(Clone)]
struct Counted {
    bytes: Arc<AtomicU64>,
    added: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

impl Counted {
    fn sync_total(&self) -> u64 {
        let now = self.bytes.load(Ordering::Relaxed);
        let before = self.added.swap(now, Ordering::Relaxed);
        self.total.fetch_add(now.saturating_sub(before), Ordering::Relaxed);
        now
    }
}

pub struct Meter {
    bytes: Arc<AtomicU64>,
    counted: Counted,
    progress: bool,
    ticker: JoinHandle<()>,
    title: String,
    total_bytes: u64,
    tx: mpsc::Sender<Event>,
}

impl Meter {
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.bytes.clone()
    }

    pub fn finish(self) {
        self.ticker.abort();
        let done = self.counted.sync_total();
        if !self.progress {
            return;
        }
        let total = if self.total_bytes == 0 { done } else { self.total_bytes };
        let _ = self.tx.try_send(Event::Progress {
            title: self.title.clone(),
            done_bytes: done,
            total_bytes: total,
            finished: true,
        });
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Keeps the operation's total current and, when the client shows progress, reports.
async fn tick(tx: mpsc::Sender<Event>, title: String, counted: Counted, total_bytes: u64, progress: bool) {
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(PROGRESS_PERIOD).await;
        let done = counted.sync_total();
        if progress && done != last {
            last = done;
            let _ =
                tx.try_send(Event::Progress { title: title.clone(), done_bytes: done, total_bytes, finished: false });
        }
    }
}
