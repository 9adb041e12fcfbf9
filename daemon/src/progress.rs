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
    /// Totals are 0 when unknown; objects are 0 for transfers that do not count them.
    Progress {
        title: String,
        done_bytes: u64,
        total_bytes: u64,
        done_objects: u64,
        total_objects: u64,
        finished: bool,
    },
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

    /// For the daemon's own background work: nobody watches it, and no client can cancel it.
    pub fn unobserved() -> Self {
        Self::channel(Arc::new(AtomicU64::new(0)), false).0
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
        self.meter_into(Scale { title: title.into(), total_bytes, total_objects: 0 }, self.total.clone())
    }

    /// Starts counting bytes and whole objects for a transfer of many objects.
    pub fn object_meter(&self, title: impl Into<String>, total_bytes: u64, total_objects: u64) -> Meter {
        self.meter_into(Scale { title: title.into(), total_bytes, total_objects }, self.total.clone())
    }

    /// A meter whose bytes the user sees but the operation's total leaves out: a transfer in the
    /// other direction (a push that first downloads what it builds on).
    pub fn side_meter(&self, title: impl Into<String>, total_bytes: u64) -> Meter {
        self.meter_into(Scale { title: title.into(), total_bytes, total_objects: 0 }, Arc::new(AtomicU64::new(0)))
    }

    fn meter_into(&self, scale: Scale, total: Arc<AtomicU64>) -> Meter {
        let bytes = Arc::new(AtomicU64::new(0));
        let objects = Arc::new(AtomicU64::new(0));
        let counted = Counted { bytes: bytes.clone(), objects, added: Arc::new(AtomicU64::new(0)), total };
        let ticker = tokio::spawn(tick(self.tx.clone(), scale.clone(), counted.clone(), self.progress));
        Meter { bytes, counted, ticker, scale, tx: self.tx.clone(), progress: self.progress }
    }
}

/// What a meter measures against.
#[derive(Clone)]
struct Scale {
    title: String,
    total_bytes: u64,
    total_objects: u64,
}

impl Scale {
    fn event(&self, done_bytes: u64, done_objects: u64, finished: bool) -> Event {
        Event::Progress {
            title: self.title.clone(),
            done_bytes,
            total_bytes: self.total_bytes,
            done_objects,
            total_objects: self.total_objects,
            finished,
        }
    }
}

/// A meter's bytes and objects, and how many of the bytes the operation's total already has.
#[derive(Clone)]
struct Counted {
    bytes: Arc<AtomicU64>,
    objects: Arc<AtomicU64>,
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
    scale: Scale,
    tx: mpsc::Sender<Event>,
}

impl Meter {
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.bytes.clone()
    }

    /// One more whole object done (for an `object_meter`).
    pub fn object_done(&self) {
        self.counted.objects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finish(self) {
        self.ticker.abort();
        let done = self.counted.sync_total();
        if !self.progress {
            return;
        }
        // A transfer of unknown size ends at 100% of what it moved.
        let total_bytes = if self.scale.total_bytes == 0 { done } else { self.scale.total_bytes };
        let scale = Scale { total_bytes, ..self.scale.clone() };
        let _ = self.tx.try_send(scale.event(done, self.counted.objects.load(Ordering::Relaxed), true));
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Keeps the operation's total current and, when the client shows progress, reports.
async fn tick(tx: mpsc::Sender<Event>, scale: Scale, counted: Counted, progress: bool) {
    let mut last = (u64::MAX, u64::MAX);
    loop {
        tokio::time::sleep(PROGRESS_PERIOD).await;
        let done = (counted.sync_total(), counted.objects.load(Ordering::Relaxed));
        if progress && done != last {
            last = done;
            let _ = tx.try_send(scale.event(done.0, done.1, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_object_meter_reports_objects_done_and_to_do_beside_bytes() {
        let (events, mut rx) = Events::channel(Arc::new(AtomicU64::new(0)), true);
        let meter = events.object_meter("Downloading LFS objects", 300, 3);
        meter.add(200);
        meter.object_done();
        meter.object_done();
        meter.finish();
        let mut last = None;
        while let Ok(event) = rx.try_recv() {
            last = Some(event);
        }
        let expected = Event::Progress {
            title: "Downloading LFS objects".into(),
            done_bytes: 200,
            total_bytes: 300,
            done_objects: 2,
            total_objects: 3,
            finished: true,
        };
        assert_eq!(last, Some(expected));
    }
}
