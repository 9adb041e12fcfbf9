//! One scheduler for every transfer the daemon runs, whichever client asked: a cap on the S3
//! requests that move data (object bodies, ranged reads, parts, part copies, listings) and on the
//! bytes they hold in memory, so memory and connections stay bounded however many clients push,
//! fetch and move LFS objects at once. Requests that move no data (HEAD, lock writes, DELETE,
//! starting and completing uploads) are not queued here: a lock's renewal must never wait behind
//! bulk data.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub const DEFAULT_MAX_REQUESTS: usize = 32;
/// Bytes of bodies held in memory at once. With the daemon's own ~30 MiB and the buffers of the
/// connections beside it, this keeps a busy daemon under 150 MiB.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 64 * 1024 * 1024;
/// What a body streamed onwards (into `git index-pack`, a file) holds at a time, whatever the
/// object's size: the chunks on their way, not the object.
pub const STREAMED_BODY_BYTES: u64 = 1024 * 1024;
/// Byte permits are counted in these units, so a part's permits fit a `u32`.
const BYTE_UNIT: u64 = 64 * 1024;

pub struct Scheduler {
    max_requests: usize,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    byte_units: u32,
    /// The most requests ever admitted at once.
    peak_requests: AtomicUsize,
}

/// Held while one request runs (and, for a streamed body, while it is read).
pub struct Admission {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Scheduler {
    pub fn new(max_requests: usize, max_inflight_bytes: u64) -> Self {
        let byte_units = (max_inflight_bytes / BYTE_UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        let max_requests = max_requests.max(1);
        Self {
            max_requests,
            requests: Arc::new(Semaphore::new(max_requests)),
            bytes: Arc::new(Semaphore::new(byte_units as usize)),
            byte_units,
            peak_requests: AtomicUsize::new(0),
        }
    }

    /// Waits until a request holding `bytes` in memory may start. A request larger than the
    /// whole budget waits for all of it rather than forever.
    pub async fn admit(&self, bytes: u64) -> Admission {
        let units = bytes.div_ceil(BYTE_UNIT).clamp(1, u64::from(self.byte_units)) as u32;
        let request = self.request_permit().await;
        // The semaphores live as long as the scheduler and are never closed.
        let bytes = self.bytes.clone().acquire_many_owned(units).await.expect("scheduler semaphores are never closed");
        Admission { _request: request, _bytes: Some(bytes) }
    }

    /// Waits until a request that holds no body in memory (a part copied inside S3, a listing
    /// page) may start.
    pub async fn admit_request(&self) -> Admission {
        Admission { _request: self.request_permit().await, _bytes: None }
    }

    async fn request_permit(&self) -> OwnedSemaphorePermit {
        let permit = self.requests.clone().acquire_owned().await.expect("scheduler semaphores are never closed");
        self.peak_requests.fetch_max(self.requests_in_flight(), Ordering::Relaxed);
        permit
    }

    pub fn max_requests(&self) -> usize {
        self.max_requests
    }

    pub fn max_inflight_bytes(&self) -> u64 {
        u64::from(self.byte_units) * BYTE_UNIT
    }

    pub fn requests_in_flight(&self) -> usize {
        self.max_requests.saturating_sub(self.requests.available_permits())
    }

    pub fn peak_requests(&self) -> usize {
        self.peak_requests.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bytes_in_flight_are_capped() {
        let scheduler = Scheduler::new(8, 1024 * 1024);
        let first = scheduler.admit(768 * 1024).await;
        let second = tokio::time::timeout(Duration::from_millis(50), scheduler.admit(512 * 1024)).await;
        assert!(second.is_err(), "the second request must wait for bytes");
        drop(first);
        assert!(tokio::time::timeout(Duration::from_secs(5), scheduler.admit(512 * 1024)).await.is_ok());
    }

    #[tokio::test]
    async fn a_request_larger_than_the_budget_still_runs() {
        let scheduler = Scheduler::new(1, 1024 * 1024);
        assert!(tokio::time::timeout(Duration::from_secs(5), scheduler.admit(10 * 1024 * 1024)).await.is_ok());
    }

    #[tokio::test]
    async fn requests_without_a_body_count_against_the_request_cap_only() {
        let scheduler = Scheduler::new(2, 1024 * 1024);
        let all_bytes = scheduler.admit(1024 * 1024).await;
        let copy = tokio::time::timeout(Duration::from_secs(5), scheduler.admit_request()).await;
        assert!(copy.is_ok(), "a copy needs no bytes");
        let third = tokio::time::timeout(Duration::from_millis(50), scheduler.admit_request()).await;
        assert!(third.is_err(), "but it takes one of the two requests");
        assert_eq!(scheduler.peak_requests(), 2);
        drop((all_bytes, copy));
    }
}
