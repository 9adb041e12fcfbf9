//! One scheduler for every transfer the daemon runs, whichever client asked: a cap on S3
//! requests in flight and on the bytes they carry, so memory and connections stay bounded
//! however many agents git-lfs starts and however many files they move.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub const DEFAULT_MAX_REQUESTS: usize = 32;
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 512 * 1024 * 1024;
/// Byte permits are counted in these units, so a part's permits fit a `u32`.
const BYTE_UNIT: u64 = 64 * 1024;

pub struct Scheduler {
    max_requests: usize,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    byte_units: u32,
}

/// Held while one request runs.
pub struct Admission {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
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
        }
    }

    /// Waits until a request carrying `bytes` may start. A request larger than the whole budget
    /// waits for all of it rather than forever.
    pub async fn admit(&self, bytes: u64) -> Admission {
        let units = bytes.div_ceil(BYTE_UNIT).clamp(1, u64::from(self.byte_units)) as u32;
        // The semaphores live as long as the scheduler and are never closed.
        let request = self.requests.clone().acquire_owned().await.expect("scheduler semaphores are never closed");
        let bytes = self.bytes.clone().acquire_many_owned(units).await.expect("scheduler semaphores are never closed");
        Admission { _request: request, _bytes: bytes }
    }

    pub fn max_requests(&self) -> usize {
        self.max_requests
    }

    pub fn requests_in_flight(&self) -> usize {
        self.max_requests.saturating_sub(self.requests.available_permits())
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
}
