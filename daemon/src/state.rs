//! What the daemon knows about itself: warm clients, connected sessions, work in progress, and
//! when it was last busy (for the idle exit).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clients::ClientCache;
use crate::listing_cache::ListingCache;
use crate::scheduler::Scheduler;
use crate::store::Resources;

pub struct DaemonState {
    pub started: Instant,
    pub socket: PathBuf,
    pub version: String,
    pub idle_timeout: Option<Duration>,
    pub clients: Arc<ClientCache>,
    pub listings: ListingCache,
    pub scheduler: Arc<Scheduler>,
    /// What every remote's storage shares: the pack cache, scratch space.
    pub store: Resources,
    /// Work that must finish even if its client goes away (a push half-way must complete or
    /// roll back, not be dropped). Waited for at shutdown.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    connections: AtomicUsize,
    requests: AtomicU64,
    next_activity: AtomicU64,
    activities: Mutex<HashMap<u64, Activity>>,
    recent_errors: Mutex<VecDeque<RecentError>>,
    last_busy: Mutex<Instant>,
    /// Bytes pushes sent to S3 and fetches received from it, since the daemon started.
    pushed_bytes: AtomicU64,
    fetched_bytes: AtomicU64,
    /// Started by a service manager: it decides when the daemon runs.
    pub managed: bool,
}

#[derive(Debug, Clone)]
pub struct Activity {
    pub what: String,
    pub remote: String,
    pub started: Instant,
    /// Bytes moved so far, for transfers.
    pub bytes: Arc<AtomicU64>,
}

/// How many failures `status` remembers.
const RECENT_ERRORS: usize = 10;

#[derive(Debug, Clone)]
pub struct RecentError {
    pub at: SystemTime,
    pub what: String,
    pub message: String,
}

impl DaemonState {
    pub fn new(
        socket: PathBuf,
        version: String,
        idle_timeout: Option<Duration>,
        scheduler: Scheduler,
        store: Resources,
        managed: bool,
    ) -> Self {
        Self {
            started: Instant::now(),
            socket,
            version,
            idle_timeout,
            clients: Arc::default(),
            listings: ListingCache::default(),
            scheduler: Arc::new(scheduler),
            store,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            connections: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            next_activity: AtomicU64::new(0),
            activities: Mutex::new(HashMap::new()),
            recent_errors: Mutex::new(VecDeque::new()),
            last_busy: Mutex::new(Instant::now()),
            pushed_bytes: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            managed,
        }
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::SeqCst);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Records a request, shown by `status`; the activity ends when the guard is dropped.
    pub fn begin(self: &Arc<Self>, what: &str, remote: &str) -> ActivityGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let id = self.next_activity.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut activities) = self.activities.lock() {
            let bytes = Arc::new(AtomicU64::new(0));
            activities
                .insert(id, Activity { what: what.into(), remote: remote.into(), started: Instant::now(), bytes });
        }
        self.touch();
        ActivityGuard { state: self.clone(), id }
    }

    /// Bytes sent by pushes and received by fetches since the daemon started.
    pub fn transferred_bytes(&self) -> (u64, u64) {
        (self.pushed_bytes.load(Ordering::Relaxed), self.fetched_bytes.load(Ordering::Relaxed))
    }

    pub fn record_error(&self, what: &str, message: &str) {
        if let Ok(mut errors) = self.recent_errors.lock() {
            if errors.len() == RECENT_ERRORS {
                errors.pop_front();
            }
            errors.push_back(RecentError { at: SystemTime::now(), what: what.into(), message: message.into() });
        }
    }

    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.recent_errors.lock().map(|e| e.iter().cloned().collect()).unwrap_or_default()
    }

    pub fn activities(&self) -> Vec<Activity> {
        self.activities.lock().map(|a| a.values().cloned().collect()).unwrap_or_default()
    }

    /// True when nobody is connected, nothing is running, and the last real request ended
    /// longer ago than the idle timeout. A `status` probe is not a request: watching the daemon
    /// does not keep it alive.
    pub fn idle_for_too_long(&self) -> bool {
        let Some(limit) = self.idle_timeout else {
            return false;
        };
        let working = !self.tasks.is_empty() || self.activities.lock().map(|a| !a.is_empty()).unwrap_or(true);
        let quiet = self.connections() == 0 && !working;
        quiet && self.last_busy.lock().map(|t| t.elapsed() >= limit).unwrap_or(false)
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_busy.lock() {
            *t = Instant::now();
        }
    }
}

pub struct ActivityGuard {
    state: Arc<DaemonState>,
    id: u64,
}

impl ActivityGuard {
    /// The counter `status` shows as this activity's bytes.
    pub fn bytes(&self) -> Arc<AtomicU64> {
        self.state
            .activities
            .lock()
            .ok()
            .and_then(|a| a.get(&self.id).map(|a| a.bytes.clone()))
            .unwrap_or_else(|| Arc::new(AtomicU64::new(0)))
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if let Ok(mut activities) = self.state.activities.lock()
            && let Some(done) = activities.remove(&self.id)
        {
            let total = match done.what.as_str() {
                "push" => Some(&self.state.pushed_bytes),
                "fetch" => Some(&self.state.fetched_bytes),
                _ => None,
            };
            if let Some(total) = total {
                total.fetch_add(done.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        self.state.touch();
    }
}
