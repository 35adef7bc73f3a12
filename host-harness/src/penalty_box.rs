//! The host side of `edge:cache/penalty-box`: the edge function's memory of
//! denials, in this process only, shared by all of its instances.
//!
//! One box per harness, and a harness serves one function: every key in it
//! belongs to that function's namespace, as the cache's do after prefixing.
//!
//! Bounded whatever callers do: at most `max_entries` entries (moka evicts
//! past it: a flood of distinct denied callers only evicts, and its
//! frequency-based admission keeps the callers that keep coming back), keys
//! and notes of bounded size (larger ones are declined), and no entry kept
//! past its end or past [`MAX_HOLD`].

use crate::metrics::PenaltyBoxCounters;
use moka::Expiry;
use moka::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Entries kept by default: with the edge function's keys (about 60 bytes),
/// notes (at most 25 bytes) and moka's bookkeeping, some 30 MB when full.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// The longest key accepted, as for the cache.
pub const MAX_KEY_BYTES: usize = 512;

/// The largest note accepted: the edge function's take 25 bytes at most.
pub const MAX_NOTE_BYTES: usize = 64;

/// The longest an entry is kept, whatever its end says: a guest's clock far
/// ahead, or a policy with a window of days, cannot pin memory. Forgetting
/// early only sends a check to the cache.
pub const MAX_HOLD: Duration = Duration::from_secs(3600);

/// Release counters, by a hash of the key: a reset of one caller refuses
/// only the holds racing it on keys of its shard, not every hold.
const SHARDS: usize = 64;

/// An entry, as the guest asked to keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub until_ms: u64,
    pub note: Box<[u8]>,
    /// When moka may drop it: `until_ms` on this host's clock, at most
    /// [`MAX_HOLD`] away.
    expires_at: Instant,
}

struct UntilExpiry;

impl Expiry<String, Arc<Entry>> for UntilExpiry {
    fn expire_after_create(&self, _: &String, entry: &Arc<Entry>, created_at: Instant) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Arc<Entry>,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(updated_at))
    }
}

/// A release counter and the lock that orders holds against releases.
#[derive(Default)]
struct Shard {
    /// Holds check their ticket and insert, and releases count and remove,
    /// under it: a hold that passed its check is inserted before any later
    /// release removes it.
    lock: Mutex<()>,
    releases: AtomicU64,
}

struct Inner {
    entries: Cache<String, Arc<Entry>>,
    shards: [Shard; SHARDS],
    counters: PenaltyBoxCounters,
}

/// The penalty box of one harness; cheap to clone. Disabled (keeps nothing)
/// with a bound of 0 entries.
#[derive(Clone)]
pub struct PenaltyBox(Option<Arc<Inner>>);

/// What [`PenaltyBox::look`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub ticket: u64,
    pub held: Option<Arc<Entry>>,
}

impl PenaltyBox {
    pub fn new(max_entries: u64, counters: PenaltyBoxCounters) -> Self {
        if max_entries == 0 {
            return Self(None);
        }
        let entries = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(UntilExpiry)
            .build();
        Self(Some(Arc::new(Inner {
            entries,
            shards: std::array::from_fn(|_| Shard::default()),
            counters,
        })))
    }

    /// Entries held now (approximately: expired and evicted entries leave
    /// in moka's housekeeping).
    pub fn entries(&self) -> u64 {
        self.0.as_ref().map_or(0, |inner| inner.entries.entry_count())
    }

    pub fn look(&self, key: &str) -> Lookup {
        let Some(inner) = &self.0 else {
            return Lookup { ticket: 0, held: None };
        };
        // Read before the entry: a release after this read refuses the hold
        // this look leads to.
        let ticket = inner.shard(key).releases.load(Ordering::Acquire);
        let held = inner.entries.get(key);
        match held {
            Some(_) => inner.counters.held.inc(),
            None => inner.counters.free.inc(),
        };
        Lookup { ticket, held }
    }

    /// Keeps `note` under `key` until `until_ms` (Unix ms), unless the key
    /// was released since the look that gave `ticket`, or the entry is
    /// unacceptable (too large, already over).
    pub fn hold(&self, key: String, ticket: u64, until_ms: u64, note: &[u8]) {
        let Some(inner) = &self.0 else { return };
        if key.len() > MAX_KEY_BYTES || note.len() > MAX_NOTE_BYTES {
            return;
        }
        // The guest reads the same wall clock; it also ignores an entry
        // past its end, so this only decides how long memory is used.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        let Some(left) = until_ms.checked_sub(now_ms).filter(|&left| left > 0) else {
            return;
        };
        let entry = Arc::new(Entry {
            until_ms,
            note: note.into(),
            expires_at: Instant::now() + Duration::from_millis(left).min(MAX_HOLD),
        });
        let shard = inner.shard(&key);
        let _ordered = shard.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if shard.releases.load(Ordering::Acquire) == ticket {
            inner.entries.insert(key, entry);
        }
    }

    /// Forgets `key`'s entry at once, and refuses the holds of looks made
    /// before.
    pub fn release(&self, key: &str) {
        let Some(inner) = &self.0 else { return };
        let shard = inner.shard(key);
        let _ordered = shard.lock.lock().unwrap_or_else(PoisonError::into_inner);
        shard.releases.fetch_add(1, Ordering::AcqRel);
        inner.entries.invalidate(key);
    }
}

impl Inner {
    fn shard(&self, key: &str) -> &Shard {
        // FNV-1a: cheap, and a key chosen to collide costs only holds.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.shards[(hash % SHARDS as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_ms() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    }

    fn penalty_box(max_entries: u64) -> PenaltyBox {
        PenaltyBox::new(max_entries, PenaltyBoxCounters::default())
    }

    #[test]
    fn holds_until_released() {
        let penalty_box = penalty_box(10);
        let lookup = penalty_box.look("k");
        assert_eq!(lookup.held, None);
        penalty_box.hold("k".into(), lookup.ticket, now_ms() + 60_000, b"note");
        let held = penalty_box.look("k").held.expect("held");
        assert_eq!(&*held.note, b"note");
        penalty_box.release("k");
        assert_eq!(penalty_box.look("k").held, None);
    }

    #[test]
    fn a_hold_after_a_release_with_an_older_ticket_is_refused() {
        let penalty_box = penalty_box(10);
        let before = penalty_box.look("k").ticket;
        penalty_box.release("k");
        penalty_box.hold("k".into(), before, now_ms() + 60_000, b"stale");
        assert_eq!(penalty_box.look("k").held, None);
        let after = penalty_box.look("k").ticket;
        penalty_box.hold("k".into(), after, now_ms() + 60_000, b"fresh");
        assert!(penalty_box.look("k").held.is_some());
    }

    #[test]
    fn oversized_past_or_disabled_holds_are_declined() {
        let penalty_box = penalty_box(10);
        let until = now_ms() + 60_000;
        penalty_box.hold("k".repeat(MAX_KEY_BYTES + 1), 0, until, b"n");
        penalty_box.hold("big".into(), 0, until, &[0; MAX_NOTE_BYTES + 1]);
        penalty_box.hold("past".into(), 0, now_ms() - 1, b"n");
        penalty_box.hold("far-past".into(), 0, 0, b"n");
        penalty_box.run_pending_tasks_for_test();
        assert_eq!(penalty_box.entries(), 0);

        let disabled = self::penalty_box(0);
        disabled.hold("k".into(), 0, until, b"n");
        assert_eq!(disabled.look("k"), Lookup { ticket: 0, held: None });
    }

    #[test]
    fn a_flood_of_distinct_keys_only_evicts() {
        let penalty_box = penalty_box(100);
        let until = now_ms() + 60_000;
        for n in 0..10_000 {
            penalty_box.hold(format!("flood-{n}"), 0, until, b"n");
        }
        penalty_box.run_pending_tasks_for_test();
        assert!(penalty_box.entries() <= 100, "{} entries", penalty_box.entries());
    }

    impl PenaltyBox {
        fn run_pending_tasks_for_test(&self) {
            if let Some(inner) = &self.0 {
                inner.entries.run_pending_tasks();
            }
        }
    }
}
