//! Circuit breakers in front of Redis: after a few consecutive outage
//! errors (refused, reset, timed out) calls fail at once with `unavailable`
//! instead of each waiting for the command deadline; a background probe,
//! one at a time and itself bounded by the deadline, closes the breaker
//! again on its first success.
//!
//! A single server has one breaker. A cluster has one per range of hash
//! slots: redis-rs does not tell which node serves a key, but the slot is
//! computed from the key alone (CRC16 of the hash tag, as the cluster does),
//! and a node serves contiguous slot ranges, so a dead primary opens the
//! breakers of its own ranges and leaves the others closed. A range that
//! straddles two nodes sees both answers and opens only when both fail;
//! with [`CLUSTER_RANGES`] ranges at most one range per node boundary does.
//!
//! The happy path costs one atomic load per command (the breaker's state)
//! and a second one for the failure count after success; no lock is taken.

use super::StoreError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Consecutive outage errors that open a breaker.
pub const FAILURE_THRESHOLD: u32 = 3;

/// The wait before the first probe after a breaker opens; it doubles after
/// each failed probe, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between two probes: it bounds how long service stays
/// degraded after Redis is back.
pub const MAX_BACKOFF: Duration = Duration::from_millis(800);

/// How many slot ranges a cluster's key space is split into.
pub const CLUSTER_RANGES: usize = 64;

/// Hash slots in a Redis Cluster.
pub(crate) const SLOTS: usize = 16_384;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const PROBING: u8 = 2;

fn state_name(state: u8) -> &'static str {
    match state {
        CLOSED => "closed",
        OPEN => "open",
        _ => "half-open",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerStateLabels {
    pub state: &'static str,
}

/// How many breakers are in each state, for `/metrics`.
pub type BreakerGauges = Family<BreakerStateLabels, Gauge>;

/// One breaker.
pub struct Breaker {
    /// What it guards, for logs: the server, or a slot range.
    name: String,
    state: AtomicU8,
    failures: AtomicU32,
    /// When the next probe is due, in milliseconds since [`Breakers::epoch`].
    probe_at: AtomicU64,
    backoff_ms: AtomicU64,
    /// When it opened, in milliseconds since [`Breakers::epoch`].
    opened_at: AtomicU64,
}

impl Breaker {
    fn new(name: String) -> Self {
        Self {
            name,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            probe_at: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(0),
            opened_at: AtomicU64::new(0),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }
}

/// The breakers of one store.
pub struct Breakers {
    all: Box<[Breaker]>,
    /// Slots per breaker: all of them for a single server.
    slots_per_breaker: usize,
    epoch: Instant,
    gauges: BreakerGauges,
    /// The last outage error, for `/readyz` and the log line when a breaker
    /// opens; written on state changes only.
    last_error: Mutex<String>,
}

impl Breakers {
    /// One breaker for a single server.
    pub fn single(target: &str) -> Self {
        Self::new(vec![Breaker::new(target.to_owned())], SLOTS)
    }

    /// One breaker per slot range of a cluster.
    pub fn cluster() -> Self {
        let per = SLOTS / CLUSTER_RANGES;
        let all = (0..CLUSTER_RANGES)
            .map(|range| Breaker::new(format!("cluster slots {}-{}", range * per, (range + 1) * per - 1)))
            .collect();
        Self::new(all, per)
    }

    fn new(all: Vec<Breaker>, slots_per_breaker: usize) -> Self {
        let gauges = BreakerGauges::default();
        gauges
            .get_or_create(&BreakerStateLabels { state: "closed" })
            .set(all.len() as i64);
        for state in ["open", "half-open"] {
            gauges.get_or_create(&BreakerStateLabels { state }).set(0);
        }
        Self {
            all: all.into_boxed_slice(),
            slots_per_breaker,
            epoch: Instant::now(),
            gauges,
            last_error: Mutex::new(String::new()),
        }
    }

    pub fn gauges(&self) -> &BreakerGauges {
        &self.gauges
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn get(&self, index: usize) -> &Breaker {
        &self.all[index]
    }

    /// The breaker guarding `key`.
    pub fn index_of(&self, key: &str) -> usize {
        if self.all.len() == 1 {
            return 0;
        }
        usize::from(key_slot(key.as_bytes())) / self.slots_per_breaker
    }

    /// The breaker guarding `slot` (a cluster's; 0 for a single server).
    pub fn index_of_slot(&self, slot: u16) -> usize {
        if self.all.len() == 1 {
            return 0;
        }
        usize::from(slot) / self.slots_per_breaker
    }

    /// A key guarded by each breaker, in order: `{N}` for the smallest
    /// number N that hashes into its range. A cluster probe asks about it,
    /// so the cluster client takes it to the node serving that range.
    pub fn probe_keys(&self) -> Vec<String> {
        let mut keys: Vec<Option<String>> = vec![None; self.all.len()];
        let mut missing = keys.len();
        for n in 0u32.. {
            let key = format!("{{{n}}}");
            let slot = &mut keys[self.index_of(&key)];
            if slot.is_none() {
                *slot = Some(key);
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
        keys.into_iter()
            .map(|key| key.expect("every range has a key"))
            .collect()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Lets a call through, or refuses it at once while its breaker is open.
    pub fn admit(&self, index: usize) -> Result<(), StoreError> {
        let breaker = &self.all[index];
        if breaker.state.load(Ordering::Acquire) == CLOSED {
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "circuit open for {}: Redis failed {FAILURE_THRESHOLD} times in a row; it is probed in the background",
            breaker.name
        )))
    }

    /// Records a call that got an answer: it ends a run of failures.
    pub fn succeeded(&self, index: usize) {
        let breaker = &self.all[index];
        // Loaded before stored: a store on every call would bounce the
        // cache line between cores.
        if breaker.failures.load(Ordering::Relaxed) != 0 {
            breaker.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records an outage error; opens the breaker at the threshold.
    pub fn failed(&self, index: usize, error: &str) {
        let breaker = &self.all[index];
        let failures = breaker.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURE_THRESHOLD {
            self.trip(index, error);
        }
    }

    /// Opens a closed breaker now (also used when Redis is unreachable at
    /// start); logs the change once.
    pub fn trip(&self, index: usize, error: &str) {
        let breaker = &self.all[index];
        if breaker
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let now = self.now_ms();
        breaker.opened_at.store(now, Ordering::Relaxed);
        let backoff = FIRST_BACKOFF.as_millis() as u64;
        breaker.backoff_ms.store(backoff, Ordering::Relaxed);
        breaker.probe_at.store(now + backoff, Ordering::Release);
        self.note_error(error);
        self.moved(CLOSED, OPEN);
        tracing::warn!(
            target: "edge_cache::breaker",
            breaker = %breaker.name,
            %error,
            "Redis circuit opened: cache calls fail at once until a probe succeeds"
        );
    }

    /// Takes the probe of an open breaker whose backoff has passed: only
    /// one caller gets it.
    pub fn take_probe(&self, index: usize) -> bool {
        let breaker = &self.all[index];
        if breaker.state.load(Ordering::Acquire) != OPEN || self.now_ms() < breaker.probe_at.load(Ordering::Acquire) {
            return false;
        }
        let taken = breaker
            .state
            .compare_exchange(OPEN, PROBING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if taken {
            self.moved(OPEN, PROBING);
        }
        taken
    }

    /// Ends a probe taken with [`Self::take_probe`]: success closes the
    /// breaker, failure opens it again for twice the previous backoff.
    pub fn probed(&self, index: usize, outcome: Result<(), String>) {
        let breaker = &self.all[index];
        match outcome {
            Ok(()) => {
                breaker.failures.store(0, Ordering::Relaxed);
                breaker.state.store(CLOSED, Ordering::Release);
                self.moved(PROBING, CLOSED);
                let open_for = Duration::from_millis(self.now_ms() - breaker.opened_at.load(Ordering::Relaxed));
                tracing::info!(
                    target: "edge_cache::breaker",
                    breaker = %breaker.name,
                    ?open_for,
                    "Redis circuit closed: Redis answers again"
                );
            }
            Err(error) => {
                let backoff = (breaker.backoff_ms.load(Ordering::Relaxed) * 2).min(MAX_BACKOFF.as_millis() as u64);
                breaker.backoff_ms.store(backoff, Ordering::Relaxed);
                breaker.probe_at.store(self.now_ms() + backoff, Ordering::Release);
                self.note_error(&error);
                breaker.state.store(OPEN, Ordering::Release);
                self.moved(PROBING, OPEN);
                tracing::debug!(target: "edge_cache::breaker", breaker = %breaker.name, backoff, "probe failed");
            }
        }
    }

    fn moved(&self, from: u8, to: u8) {
        self.gauges
            .get_or_create(&BreakerStateLabels {
                state: state_name(from),
            })
            .dec();
        self.gauges
            .get_or_create(&BreakerStateLabels { state: state_name(to) })
            .inc();
    }

    /// How many breakers are not closed.
    pub fn open_count(&self) -> usize {
        self.all.iter().filter(|breaker| !breaker.is_closed()).count()
    }

    /// Records why Redis cannot be reached when no breaker changes (a
    /// cluster not connected yet).
    pub fn note_error(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = error.to_owned();
    }

    /// The last outage error seen when a breaker opened or a probe failed.
    pub fn last_error(&self) -> String {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of its hash tag,
/// the part between the first `{` and the next `}` when not empty.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&byte| byte == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&byte| byte == b'}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16(hashed) % SLOTS as u16
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(
            key_slot(b"foo{}{bar}"),
            key_slot(b"bar"),
            "an empty tag hashes the whole key"
        );
    }

    #[test]
    fn a_breaker_opens_after_consecutive_failures_and_closes_on_a_probe() {
        let breakers = Breakers::single("redis://test");
        for _ in 0..FAILURE_THRESHOLD - 1 {
            breakers.failed(0, "refused");
        }
        breakers.succeeded(0);
        for _ in 0..FAILURE_THRESHOLD - 1 {
            breakers.failed(0, "refused");
        }
        assert!(breakers.admit(0).is_ok(), "a success broke the run");
        breakers.failed(0, "refused");
        assert!(matches!(breakers.admit(0), Err(StoreError::Unavailable(_))));
        assert!(!breakers.take_probe(0), "the backoff has not passed");
        std::thread::sleep(FIRST_BACKOFF);
        assert!(breakers.take_probe(0));
        assert!(!breakers.take_probe(0), "one probe at a time");
        breakers.probed(0, Err("timed out".into()));
        assert_eq!(breakers.last_error(), "timed out");
        assert!(breakers.admit(0).is_err());
        std::thread::sleep(FIRST_BACKOFF);
        assert!(!breakers.take_probe(0), "the backoff doubled");
        std::thread::sleep(FIRST_BACKOFF);
        assert!(breakers.take_probe(0));
        breakers.probed(0, Ok(()));
        assert!(breakers.admit(0).is_ok());
        let closed = breakers
            .gauges()
            .get_or_create(&BreakerStateLabels { state: "closed" })
            .get();
        assert_eq!((closed, breakers.open_count()), (1, 0));
    }

    #[test]
    fn cluster_breakers_split_the_slots() {
        let breakers = Breakers::cluster();
        assert_eq!(breakers.len(), CLUSTER_RANGES);
        assert_eq!(breakers.index_of("foo"), 12182 / 256);
        assert_eq!(breakers.index_of("{foo}:anything"), breakers.index_of("foo"));
        for (index, key) in breakers.probe_keys().iter().enumerate() {
            assert_eq!(breakers.index_of(key), index, "{key}");
        }
    }
}
