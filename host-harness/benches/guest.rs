//! Micro benchmarks of the edge function on the embedded in-memory cache,
//! through the harness's own engine (pooling allocator, epoch deadlines):
//!
//! - `instantiate_drop`: one `Harness::instantiate` (the fresh store and
//!   instance each request gets), then dropping both. Target: ≤ 10 µs.
//! - `native_get`: `Keyspace::get` called by the host itself, on the counter
//!   the guest's `peek` reads: the cost of the operation without the guest.
//! - `guest_peek_one_get`: the `edge:cache/rate-limit` `peek` export with a
//!   fixed-window policy, on one long-lived instance: one `cache.get` host
//!   call.
//! - `guest_peek_no_io`: the same export with an invalid policy (limit 0),
//!   which the guest rejects before calling the cache.
//!
//! Both `peek` benches also read the WASI wall clock once, so the clock
//! cancels out of their difference. After criterion's report the bench
//! measures all four again in a tight loop of its own and prints
//! `instantiate+drop` and the guest→host overhead of one `cache.get`:
//! (`guest_peek_one_get` − `guest_peek_no_io`) − `native_get`. That still
//! includes the guest's key formatting and count parsing, so it is an upper
//! bound. Target: ≤ 1 µs.
//!
//! Run with `cargo bench -p edge-cache-harness --bench guest` (a criterion
//! filter after `--` narrows the report; the summary always measures all
//! four).

use criterion::Criterion;
use edge_cache_harness::bindings::EdgeFunction;
use edge_cache_harness::bindings::rate_limit::{Algorithm, Error, FailMode, Policy};
use edge_cache_harness::engine::set_deadline;
use edge_cache_harness::host::EdgeState;
use edge_cache_harness::{Harness, HarnessConfig};
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;
use wasmtime::Store;

/// The rate-limit key the guest's `peek` is asked about.
const CALLER: &str = "bench";

/// The longest window a policy can have: its counter's key stays the same
/// for the whole run (and the next eighty years), so `native_get` and
/// `guest_peek_one_get` always read the same, existing entry.
const WINDOW_SECONDS: u32 = u32::MAX;

/// How many units the counter holds: any count below the limit will do.
const COUNT: u32 = 1;

/// Re-armed before every timed loop: the store's own deadline, set when it
/// was made, runs out long before criterion is done with one instance.
const DEADLINE: Duration = Duration::from_secs(10);

/// The tight loop after criterion: rounds of about `ROUND` each, reported
/// as the median round, which shrugs off the odd preempted one.
const ROUND: Duration = Duration::from_millis(20);
const ROUNDS: usize = 25;

struct Fixture {
    runtime: Runtime,
    harness: Harness,
    store: Store<EdgeState>,
    instance: EdgeFunction,
    counter_key: String,
    one_get: Policy,
    no_io: Policy,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let harness = runtime
            .block_on(Harness::start(&HarnessConfig::default()))
            .expect("the harness starts on the embedded cache");
        let (store, instance) = runtime
            .block_on(harness.instantiate())
            .expect("the built guest exports the edge-function world");
        let one_get = Policy {
            name: String::new(),
            algorithm: Algorithm::FixedWindow,
            limit: 1_000_000,
            window_seconds: WINDOW_SECONDS,
            fail_mode: FailMode::Open,
        };
        let no_io = Policy {
            limit: 0,
            ..one_get.clone()
        };
        // The guest's fixed-window key, `rl:{key}:name:fw:window:index`;
        // `check` below proves it is the one the guest reads.
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let index = since_epoch.as_millis() / (u128::from(WINDOW_SECONDS) * 1000);
        let counter_key = format!("rl:{{{CALLER}}}:default:fw:{WINDOW_SECONDS}:{index}");
        let mut fixture = Self {
            runtime,
            harness,
            store,
            instance,
            counter_key,
            one_get,
            no_io,
        };
        fixture.check();
        fixture
    }

    /// Seeds the counter and checks that every bench does what it says:
    /// native and guest read the same existing entry, and the invalid policy
    /// is rejected as such.
    fn check(&mut self) {
        let Self {
            runtime,
            harness,
            store,
            instance,
            counter_key,
            one_get,
            no_io,
        } = self;
        let cache = harness.cache();
        let limiter = instance.edge_cache_rate_limit();
        runtime.block_on(async {
            cache
                .set(counter_key, COUNT.to_string().as_bytes(), None, false)
                .await
                .expect("the embedded cache takes the counter");
            let stored = cache.get(counter_key).await.expect("the embedded cache answers");
            assert_eq!(stored.as_deref(), Some(COUNT.to_string().as_bytes()));
            let decision = limiter
                .call_peek(&mut *store, CALLER, one_get)
                .await
                .expect("peek does not trap")
                .expect("a valid policy");
            assert_eq!(
                (decision.remaining, decision.degraded),
                (one_get.limit - COUNT, None),
                "the guest reads {counter_key}"
            );
            let rejected = limiter
                .call_peek(&mut *store, CALLER, no_io)
                .await
                .expect("peek does not trap");
            assert!(matches!(rejected, Err(Error::InvalidPolicy(_))), "{rejected:?}");
        });
    }

    fn instantiate_drop(&self, iterations: u64) -> Duration {
        self.runtime.block_on(async {
            let started = Instant::now();
            for _ in 0..iterations {
                let instance = self.harness.instantiate().await.expect("an instance");
                drop(black_box(instance));
            }
            started.elapsed()
        })
    }

    fn native_get(&self, iterations: u64) -> Duration {
        let cache = self.harness.cache();
        self.runtime.block_on(async {
            let started = Instant::now();
            for _ in 0..iterations {
                let value = cache.get(black_box(&self.counter_key)).await;
                black_box(&value.expect("the embedded cache answers"));
            }
            started.elapsed()
        })
    }

    fn peek(&mut self, invalid: bool, iterations: u64) -> Duration {
        let policy = if invalid { &self.no_io } else { &self.one_get };
        let limiter = self.instance.edge_cache_rate_limit();
        let store = &mut self.store;
        set_deadline(store, Instant::now() + DEADLINE);
        self.runtime.block_on(async {
            let started = Instant::now();
            for _ in 0..iterations {
                let answer = limiter.call_peek(&mut *store, CALLER, black_box(policy)).await;
                black_box(&answer.expect("peek does not trap"));
            }
            started.elapsed()
        })
    }

    fn peek_one_get(&mut self, iterations: u64) -> Duration {
        self.peek(false, iterations)
    }

    fn peek_no_io(&mut self, iterations: u64) -> Duration {
        self.peek(true, iterations)
    }
}

fn benches(criterion: &mut Criterion, fixture: &mut Fixture) {
    criterion.bench_function("instantiate_drop", |b| {
        b.iter_custom(|iterations| fixture.instantiate_drop(iterations))
    });
    let mut calls = criterion.benchmark_group("cache_get");
    calls.bench_function("native_get", |b| {
        b.iter_custom(|iterations| fixture.native_get(iterations))
    });
    calls.bench_function("guest_peek_one_get", |b| {
        b.iter_custom(|iterations| fixture.peek_one_get(iterations))
    });
    calls.bench_function("guest_peek_no_io", |b| {
        b.iter_custom(|iterations| fixture.peek_no_io(iterations))
    });
    calls.finish();
}

/// Whether criterion is measuring, rather than listing or smoke-testing the
/// benches (`cargo test --benches` runs them without `--bench`): only then
/// is the summary worth its seconds.
fn measuring() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter().any(|arg| arg == "--bench")
        && !args
            .iter()
            .any(|arg| arg == "--test" || arg == "--list" || arg.starts_with("--profile-time"))
}

/// Microseconds per iteration of `timed`, the median of `ROUNDS` rounds.
fn micros_per_iteration(mut timed: impl FnMut(u64) -> Duration) -> f64 {
    // Doubling up to a round's length doubles as the warm-up.
    let mut iterations = 1;
    while timed(iterations) < ROUND {
        iterations *= 2;
    }
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| timed(iterations).as_secs_f64() * 1e6 / iterations as f64)
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn summary(fixture: &mut Fixture) {
    let instantiate = micros_per_iteration(|n| fixture.instantiate_drop(n));
    let native = micros_per_iteration(|n| fixture.native_get(n));
    let one_get = micros_per_iteration(|n| fixture.peek_one_get(n));
    let no_io = micros_per_iteration(|n| fixture.peek_no_io(n));
    let overhead = one_get - no_io - native;
    println!("instantiate+drop: {instantiate:.2} µs (target ≤ 10 µs)");
    println!(
        "guest→host cache.get overhead: {overhead:.2} µs \
         (b {one_get:.2} µs − c {no_io:.2} µs − native {native:.2} µs; target ≤ 1 µs)"
    );
}

fn main() {
    let mut fixture = Fixture::new();
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion, &mut fixture);
    criterion.final_summary();
    if measuring() {
        summary(&mut fixture);
    }
}
