//! Overload, shed politely: requests wait for an instance in a bounded queue
//! for a bounded time, and past that get a 503 with `Retry-After` (never a
//! 500 from an exhausted instance pool). What is shed is counted, and logged
//! as a summary at most once a second, so a flood cannot flood the logs.

use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How requests wait for an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Requests that may wait for an instance at once; past it, a request
    /// is shed at once.
    pub max_queued: usize,
    /// The longest a request waits for an instance before it is shed.
    pub queue_timeout: Duration,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_queued: 1024,
            queue_timeout: Duration::from_secs(1),
        }
    }
}

/// Why a request got no instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue was full when it arrived.
    QueueFull,
    /// It waited its turn for the longest allowed.
    QueueTimeout,
}

impl Shed {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue-full",
            Self::QueueTimeout => "queue-timeout",
        }
    }
}

/// The right to run one instance: held from before an instance is taken or
/// made until it is back in the warm pool or dropped, so instances alive
/// never exceed the engine's pool (which would fail the instantiation).
pub type InstancePermit = OwnedSemaphorePermit;

/// Hands out instance permits through a bounded, timed queue.
pub struct Admission {
    instances: Arc<Semaphore>,
    max_instances: usize,
    queued: AtomicUsize,
    limits: QueueLimits,
}

impl Admission {
    pub fn new(max_instances: u32, limits: QueueLimits) -> Self {
        Self {
            instances: Arc::new(Semaphore::new(max_instances as usize)),
            max_instances: max_instances as usize,
            queued: AtomicUsize::new(0),
            limits,
        }
    }

    /// An instance permit, waiting at most until the queue timeout or
    /// `deadline`, whichever is first.
    pub async fn admit(&self, deadline: Instant) -> Result<InstancePermit, Shed> {
        // The fast path: a free instance, no queue.
        if let Ok(permit) = self.instances.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limits.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed::QueueFull);
        }
        let until = deadline.min(Instant::now() + self.limits.queue_timeout);
        let waited = tokio::time::timeout_at(until.into(), self.instances.clone().acquire_owned()).await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout is the only way out.
            Ok(Err(_)) | Err(_) => Err(Shed::QueueTimeout),
        }
    }

    /// Requests waiting for an instance now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Whether no request holds or waits for an instance.
    pub fn idle(&self) -> bool {
        self.queued() == 0 && self.instances.available_permits() == self.max_instances
    }

    /// Instances free now (neither running nor reserved).
    pub fn available(&self) -> usize {
        self.instances.available_permits()
    }
}

/// Bytes of request bodies held at once, shared by every request: a flood
/// of large bodies waits (and is shed) instead of growing the heap.
pub struct BodyBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

/// A reservation from the [`BodyBudget`], given back when dropped.
pub type BodyPermit = OwnedSemaphorePermit;

/// The budget is counted in KiB: fine enough for bodies, and a `u32` of them
/// covers any budget a machine has.
const BODY_UNIT: usize = 1024;

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        let total_units = u32::try_from(bytes.div_ceil(BODY_UNIT)).unwrap_or(u32::MAX).max(1);
        Self {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// Reserves `bytes` (at most the whole budget), waiting until `until`.
    pub async fn reserve(&self, bytes: usize, until: Instant) -> Option<BodyPermit> {
        let units = u32::try_from(bytes.div_ceil(BODY_UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_units);
        if let Ok(permit) = self.units.clone().try_acquire_many_owned(units) {
            return Some(permit);
        }
        tokio::time::timeout_at(until.into(), self.units.clone().acquire_many_owned(units))
            .await
            .ok()?
            .ok()
    }
}

/// Counts events that must not be logged one by one (shed requests,
/// connections closed for timeouts), and logs them as one line per period.
pub struct Summary {
    what: &'static str,
    count: AtomicU64,
    since: Mutex<Instant>,
    /// When an event was last logged in full, in ms since `epoch`.
    detailed_at: AtomicU64,
    epoch: Instant,
    /// The same events in `/metrics`, counted as they happen.
    counter: Counter,
}

/// The shortest time between two summary lines of one kind.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(1);

impl Summary {
    pub fn new(what: &'static str, counter: Counter) -> Self {
        Self {
            what,
            count: AtomicU64::new(0),
            since: Mutex::new(Instant::now()),
            detailed_at: AtomicU64::new(0),
            epoch: Instant::now(),
            counter,
        }
    }

    /// Counts one event.
    pub fn note(&self) {
        self.counter.inc();
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one event, and says whether it may be logged in full: the
    /// first of each period is, the rest only in the summary.
    pub fn note_detailed(&self) -> bool {
        self.note();
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.detailed_at.load(Ordering::Relaxed);
        let period = SUMMARY_PERIOD.as_millis() as u64;
        (last == 0 || now.saturating_sub(last) >= period)
            && self
                .detailed_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Logs what was counted since the last line, when there is something
    /// and a period has passed. Called by a timer, not per event.
    pub fn flush(&self, now: Instant) {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if now.duration_since(*since) < SUMMARY_PERIOD {
            return;
        }
        let count = self.count.swap(0, Ordering::Relaxed);
        if count > 0 {
            let seconds = now.duration_since(*since).as_secs_f64();
            tracing::warn!(count, seconds = format_args!("{seconds:.1}"), "{}", self.what);
        }
        *since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_sheds_at_once_and_a_slow_one_after_its_timeout() {
        let admission = Admission::new(
            1,
            QueueLimits {
                max_queued: 1,
                queue_timeout: Duration::from_millis(100),
            },
        );
        let far = Instant::now() + Duration::from_secs(60);
        let held = admission.admit(far).await.expect("a free instance");
        let admission = Arc::new(admission);
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit(far).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(admission.queued(), 1);
        assert_eq!(admission.admit(far).await.err(), Some(Shed::QueueFull));
        assert_eq!(waiting.await.unwrap(), Err(Shed::QueueTimeout));
        assert_eq!(admission.queued(), 0);
        // A permit given back serves the next in line.
        let next = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit(far).await.map(drop) }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(next.await.unwrap(), Ok(()));
        assert_eq!(admission.available(), 1);
    }

    #[test]
    fn one_event_a_period_is_logged_in_full() {
        let summary = Summary::new("events", Counter::default());
        assert!(summary.note_detailed());
        assert!(!summary.note_detailed());
        assert!(!summary.note_detailed());
        assert_eq!(summary.counter.get(), 3);
    }

    #[tokio::test]
    async fn body_reservations_wait_for_the_budget_and_give_up_in_time() {
        let budget = BodyBudget::new(64 << 10);
        let soon = || Instant::now() + Duration::from_millis(50);
        let big = budget.reserve(60 << 10, soon()).await.expect("fits");
        // 8 KiB do not fit beside 60 KiB of 64.
        assert!(budget.reserve(8 << 10, soon()).await.is_none());
        let small = budget.reserve(4 << 10, soon()).await.expect("4 KiB fit");
        drop(big);
        // More than the whole budget waits for all of it, never forever.
        assert!(budget.reserve(1 << 30, soon()).await.is_none());
        drop(small);
        assert!(budget.reserve(1 << 30, soon()).await.is_some());
    }

    #[tokio::test]
    async fn the_request_deadline_bounds_the_wait() {
        let admission = Admission::new(1, QueueLimits::default());
        let _held = admission.admit(Instant::now() + Duration::from_secs(60)).await.unwrap();
        let started = tokio::time::Instant::now();
        let shed = admission.admit(Instant::now() + Duration::from_millis(10)).await;
        assert_eq!(shed.err(), Some(Shed::QueueTimeout));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?}",
            started.elapsed()
        );
    }
}
