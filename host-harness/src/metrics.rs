//! Prometheus metrics (OpenMetrics text), served on the admin listener.

use crate::listener::ConnectionMetrics;
use crate::store::Store;
use crate::store::breaker::BreakerGauges;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub op: &'static str,
    pub error: &'static str,
}

/// Builds the store latency histogram: 50 µs to ~0.8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
}

/// A rate limit decision, as the function reported it: `allowed` or
/// `denied`, and `no` or why it was made without the cache.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub result: &'static str,
    pub degraded: &'static str,
}

/// The statuses whose counters are kept resolved (any other is looked up).
const STATUS_RANGE: std::ops::Range<u16> = 100..600;

/// The `degraded` label's values, in [`DecisionCounters`]' order.
pub const DEGRADED_REASONS: [&str; 5] = ["no", "cache-unavailable", "cache-timeout", "cache-error", "contended"];

/// The rate limit decision counters, resolved once from their family, so
/// counting a decision (every request) hashes no labels.
#[derive(Clone)]
pub struct DecisionCounters(Arc<[[Counter; DEGRADED_REASONS.len()]; 2]>);

impl DecisionCounters {
    pub fn new(family: &Family<DecisionLabels, Counter>) -> Self {
        let resolve = |result: &'static str| {
            DEGRADED_REASONS.map(|degraded| family.get_or_create(&DecisionLabels { result, degraded }).clone())
        };
        Self(Arc::new([resolve("allowed"), resolve("denied")]))
    }

    /// Counts one decision; `degraded` indexes [`DEGRADED_REASONS`].
    pub fn count(&self, allowed: bool, degraded: usize) {
        self.0[usize::from(!allowed)][degraded].inc();
    }
}

/// The penalty box's lookups, resolved once from their family: every rate
/// limit check makes one.
#[derive(Clone, Default)]
pub struct PenaltyBoxCounters {
    /// Lookups that found an entry (the function then decides without the
    /// cache, unless the entry does not deny the request at hand).
    pub held: Counter,
    /// Lookups that found none.
    pub free: Counter,
}

/// The cache operations, as `/metrics` labels them.
pub const OPERATIONS: [&str; 14] = [
    "get",
    "get-many",
    "set",
    "delete",
    "exists",
    "expire",
    "ttl",
    "incr-by",
    "incr-by-bounded",
    "compare-and-swap",
    "compare-and-delete",
    // wasi:keyvalue's own.
    "incr",
    "set-many",
    "list-keys",
];

/// What the keyspace measures: every store operation's latency and
/// errors (for Redis these are Redis round trips), the store's circuit
/// breakers, and whatever the store measures itself.
#[derive(Clone)]
pub struct StoreMetrics {
    pub latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// `latency` for each of [`OPERATIONS`], resolved on first use: every
    /// cache call observes one, and a lookup by label hashes.
    latency_by_op: Arc<[OnceLock<Histogram>; OPERATIONS.len()]>,
    pub errors: Family<ErrorLabels, Counter>,
    pub breakers: BreakerGauges,
    /// The store, to register its own metrics.
    store: Option<Arc<dyn Store>>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self::new(BreakerGauges::default())
    }
}

impl StoreMetrics {
    pub fn new(breakers: BreakerGauges) -> Self {
        Self {
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            latency_by_op: Arc::default(),
            errors: Family::default(),
            breakers,
            store: None,
        }
    }

    /// The metrics of operations on `store`, its breakers and its own.
    pub fn of(store: Arc<dyn Store>) -> Self {
        Self {
            store: Some(store.clone()),
            ..Self::new(store.breaker_gauges())
        }
    }

    pub fn observe(&self, op: &'static str, took: Duration, error: Option<&'static str>) {
        let resolve = || self.latency.get_or_create(&OperationLabels { op }).clone();
        match OPERATIONS.iter().position(|known| *known == op) {
            Some(index) => self.latency_by_op[index]
                .get_or_init(resolve)
                .observe(took.as_secs_f64()),
            None => resolve().observe(took.as_secs_f64()),
        }
        if let Some(error) = error {
            self.errors.get_or_create(&ErrorLabels { op, error }).inc();
        }
    }
}

/// Everything the harness exposes on `/metrics`.
pub struct Metrics {
    registry: Registry,
    pub responses: Family<StatusLabels, Counter>,
    pub cache_lookups: Family<ResultLabels, Counter>,
    pub cache_hit_ratio: Gauge<f64, AtomicU64>,
    /// `responses` by status, each resolved on its first use: counting a
    /// response (every request) then hashes no labels.
    response_counters: Box<[OnceLock<Counter>]>,
    /// `cache_lookups` for hit, stale, miss and bypass, resolved once.
    lookup_counters: [Counter; 4],
    /// Shared with the host side of `edge:cache/telemetry`, which counts.
    pub rate_limit_decisions: Family<DecisionLabels, Counter>,
    /// Requests answered 503 for overload (no instance in time, or no room
    /// for their body).
    pub requests_shed: Counter,
    /// Requests the edge function failed (500) or ran past its deadline (504).
    pub guest_failures: Counter,
    connections_closed: Family<ReasonLabels, Counter>,
    penalty_box_lookups: Family<ResultLabels, Counter>,
    penalty_box_entries: Gauge,
    connections_open: Gauge,
    requests_queued: Gauge,
    instances_warm: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl Metrics {
    /// Registers the harness's metrics, the store's and the origin's read
    /// counter.
    pub fn new(store: &StoreMetrics, origin_reads: &Counter) -> Self {
        let mut registry = Registry::with_prefix("edge_cache");
        let metrics = Self {
            responses: Family::default(),
            cache_lookups: Family::default(),
            cache_hit_ratio: Gauge::default(),
            response_counters: (0..STATUS_RANGE.len()).map(|_| OnceLock::new()).collect(),
            lookup_counters: Default::default(),
            rate_limit_decisions: Family::default(),
            requests_shed: Counter::default(),
            guest_failures: Counter::default(),
            connections_closed: Family::default(),
            penalty_box_lookups: Family::default(),
            penalty_box_entries: Gauge::default(),
            connections_open: Gauge::default(),
            requests_queued: Gauge::default(),
            instances_warm: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests_shed",
            "Requests answered 503 because every instance was busy past the queue's bounds",
            metrics.requests_shed.clone(),
        );
        registry.register(
            "guest_failures",
            "Requests the edge function failed (500) or ran past its deadline (504)",
            metrics.guest_failures.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the harness closed (header-timeout, idle-timeout, evicted at the connection bound, accept-error)",
            metrics.connections_closed.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open",
            metrics.connections_open.clone(),
        );
        registry.register(
            "requests_queued",
            "Requests waiting for an instance",
            metrics.requests_queued.clone(),
        );
        registry.register(
            "instances_warm",
            "Instances kept warm between requests",
            metrics.instances_warm.clone(),
        );
        registry.register(
            "http_responses",
            "HTTP responses by status code",
            metrics.responses.clone(),
        );
        registry.register(
            "cache_lookups",
            "Profile lookups by result (x-cache: hit, miss, stale, bypass)",
            metrics.cache_lookups.clone(),
        );
        registry.register(
            "cache_hit_ratio",
            "Share of profile lookups answered from the cache (hit or stale)",
            metrics.cache_hit_ratio.clone(),
        );
        registry.register(
            "rate_limit_decisions",
            "Rate limit decisions as the edge function made them: allowed or denied, and degraded (no, or why the cache was not used)",
            metrics.rate_limit_decisions.clone(),
        );
        registry.register(
            "store_breakers",
            "Circuit breakers in front of Redis by state (closed, open, half-open): one for a server, one per slot range for a cluster",
            store.breakers.clone(),
        );
        registry.register(
            "penalty_box_lookups",
            "Rate limit checks that looked for a kept denial, by result (held: found one, so the cache was spared unless it did not apply; free: none)",
            metrics.penalty_box_lookups.clone(),
        );
        registry.register(
            "penalty_box_entries",
            "Denials kept in the penalty box (approximate: expired entries leave in housekeeping)",
            metrics.penalty_box_entries.clone(),
        );
        registry.register("origin_reads", "Reads from the profile origin", origin_reads.clone());
        registry.register(
            "store_operation_duration_seconds",
            "Cache store operations (Redis round trips) by operation",
            store.latency.clone(),
        );
        registry.register(
            "store_errors",
            "Cache store errors by operation and kind",
            store.errors.clone(),
        );
        if let Some(own) = &store.store {
            own.register_metrics(&mut registry);
        }
        let lookup = |result| metrics.cache_lookups.get_or_create(&ResultLabels { result }).clone();
        let lookup_counters = [lookup("hit"), lookup("stale"), lookup("miss"), lookup("bypass")];
        Self {
            registry,
            lookup_counters,
            ..metrics
        }
    }

    /// Counts one response by its status.
    fn count_status(&self, status: u16) {
        let resolve = || self.responses.get_or_create(&StatusLabels { status }).clone();
        match STATUS_RANGE.contains(&status) {
            true => self.response_counters[usize::from(status - STATUS_RANGE.start)]
                .get_or_init(resolve)
                .inc(),
            false => resolve().inc(),
        };
    }

    /// Counts one response the edge function gave.
    pub fn observe_response(&self, status: u16, x_cache: Option<&str>) {
        self.count_status(status);
        // In `lookup_counters`' order.
        let index = match x_cache {
            Some("hit") => 0,
            Some("stale") => 1,
            Some("miss") => 2,
            Some("bypass") => 3,
            _ => return,
        };
        self.lookup_counters[index].inc();
        let [hit, stale, miss, bypass] = self.lookup_counters.each_ref().map(|counter| counter.get() as f64);
        self.cache_hit_ratio.set((hit + stale) / (hit + stale + miss + bypass));
    }

    /// The counters the penalty box reports into.
    pub fn penalty_box_counters(&self) -> PenaltyBoxCounters {
        let lookups = |result| self.penalty_box_lookups.get_or_create(&ResultLabels { result }).clone();
        PenaltyBoxCounters {
            held: lookups("held"),
            free: lookups("free"),
        }
    }

    /// Samples the penalty box's size, at scrape time.
    pub fn set_penalty_box_entries(&self, entries: u64) {
        self.penalty_box_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The counters the connection bounds report into.
    pub fn connection_metrics(&self) -> ConnectionMetrics {
        let closed = |reason| self.connections_closed.get_or_create(&ReasonLabels { reason }).clone();
        ConnectionMetrics {
            header_timeouts: closed("header-timeout"),
            idle_timeouts: closed("idle-timeout"),
            evictions: closed("evicted"),
            accept_errors: closed("accept-error"),
        }
    }

    /// Counters nobody scrapes (the admin listener's own connections).
    pub fn unregistered_connection_metrics() -> ConnectionMetrics {
        ConnectionMetrics {
            header_timeouts: Counter::default(),
            idle_timeouts: Counter::default(),
            evictions: Counter::default(),
            accept_errors: Counter::default(),
        }
    }

    /// Counts a response the harness gave without running the edge
    /// function (a bad request, an unknown key, overload).
    pub fn observe_rejection(&self, status: u16) {
        self.count_status(status);
    }

    /// Samples the gauges read at scrape time.
    pub fn set_gauges(&self, connections: usize, queued: usize, warm: usize) {
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        self.connections_open.set(gauge(connections));
        self.requests_queued.set(gauge(queued));
        self.instances_warm.set(gauge(warm));
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
