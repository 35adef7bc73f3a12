//! `bench/run`: the edge function served by the harness against the same
//! endpoints written natively (`bench/native`), on one private redis-server,
//! under load from wrk, alternating the two for several rounds.
//!
//! For each workload it first checks that both answer alike and counts the
//! Redis calls a request makes (`INFO commandstats`), then measures
//! requests/s, p50/p99 latency and server CPU per request (from /proc), and
//! prints every harness÷native ratio per round and their medians.
//!
//! The `hosts` workloads rank the harness among the Wasm hosts instead: both
//! it and `wasmtime serve` serve one trivial `wasi:http` component
//! (`bench/hello`), and the ratios are harness÷`wasmtime serve`.

mod http;
mod process;
mod wrk;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use edge_cache_origin::{Origin, OriginConfig};
use process::{Redis, Service, cpu_time, free_port, ticks_per_second};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wrk::{Load, Paths};

#[derive(Parser)]
#[command(
    name = "edge-cache-bench",
    about = "Benchmark the harness against the native baseline"
)]
struct Options {
    /// A short run (about 30 s) that still prints every ratio; also set by
    /// `BENCH_QUICK=1`.
    #[arg(long, env = "BENCH_QUICK", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    quick: bool,
    /// Rounds per workload and connection count; each round runs both
    /// services, in alternating order.
    #[arg(long)]
    rounds: Option<usize>,
    /// How long each measured load lasts, in seconds (wrk's resolution).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    duration: Option<u64>,
    /// Concurrent connections, one measurement series each.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    connections: Vec<u32>,
    /// Which workloads to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hit,hit-near,limiter,limiter-boxed,miss,floor,hosts,hosts-reuse"
    )]
    workloads: Vec<Workload>,
    /// The `wasmtime` CLI the `hosts` workloads rank the harness against
    /// (wasmtime-cli 48.0.8; `scripts/setup --bench` installs it). Default:
    /// the one `scripts/setup --bench` installed, else `wasmtime` on `PATH`.
    #[arg(long, env = "EDGE_CACHE_WASMTIME")]
    wasmtime: Option<PathBuf>,
    /// The origin's simulated latency on the miss path, in milliseconds.
    #[arg(long, default_value_t = 1)]
    origin_latency_ms: u64,
    /// Where the release binaries are (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// An extra argument for `edge-cache serve` (repeatable), e.g.
    /// `--harness-arg=--instance-reuse=1` to give every request a fresh
    /// instance.
    #[arg(long = "harness-arg", allow_hyphen_values = true)]
    harness_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    /// `GET /profiles/alice`, always in the cache: limiter + cache lookup.
    Hit,
    /// `hit` with the harness's near cache on (`--near-cache`): the lookup
    /// is answered in the harness, the limiter alone goes to Redis.
    HitNear,
    /// Every request over its caller's limit: the fixed-window check alone,
    /// answered 429. The harness's penalty box is off, so that every check
    /// reaches Redis, as the native baseline's do.
    Limiter,
    /// `limiter` with the harness's penalty box on (its default): after the
    /// first denial, requests are denied from memory, without Redis.
    LimiterBoxed,
    /// A different profile each request: limiter, lookup, fill lock,
    /// origin (with latency), compare-and-swap store, unlock.
    Miss,
    /// The hit path's host calls with none of the edge function's logic:
    /// the harness serves `bench/floor` instead of the edge function.
    Floor,
    /// `bench/hello` (fixed bytes, no imports beyond WASI) served by the
    /// harness and by `wasmtime serve` with its defaults: the harness ranked
    /// against the host users would run instead.
    Hosts,
    /// As `hosts`, with `wasmtime serve` reusing an instance for as many
    /// requests as the harness does (`--max-instance-reuse-count`).
    HostsReuse,
}

/// The harness's near cache in the hit-near workload.
const NEAR_CACHE_SIZE: &str = "16MB";

/// The component of the floor workload (built by `build.rs`).
const FLOOR_COMPONENT: &str = env!("EDGE_CACHE_BENCH_FLOOR");

/// The component of the `hosts` workloads (built by `build.rs`).
const HELLO_COMPONENT: &str = env!("EDGE_CACHE_BENCH_HELLO");

/// The `wasmtime serve` the harness is ranked against: the release whose
/// runtime the harness embeds.
const WASMTIME_VERSION: &str = "48.0.8";

/// Requests the harness serves with one instance by default
/// (`edge-cache serve --instance-reuse`); `hosts-reuse` gives `wasmtime
/// serve` the same.
const HARNESS_INSTANCE_REUSE: u32 = 100;

/// Ids per wrk thread on the miss path; a run must not need more.
const MISS_IDS_PER_THREAD: u64 = 200_000;

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::HitNear => "hit-near",
            Self::Limiter => "limiter",
            Self::LimiterBoxed => "limiter-boxed",
            Self::Miss => "miss",
            Self::Floor => "floor",
            Self::Hosts => "hosts",
            Self::HostsReuse => "hosts-reuse",
        }
    }

    /// Whether the harness is measured against `wasmtime serve` (both serving
    /// `bench/hello`) rather than against the native service.
    fn ranks_hosts(self) -> bool {
        matches!(self, Self::Hosts | Self::HostsReuse)
    }

    fn paths(self) -> Paths {
        match self {
            Self::Hit
            | Self::HitNear
            | Self::Limiter
            | Self::LimiterBoxed
            | Self::Floor
            | Self::Hosts
            | Self::HostsReuse => Paths::Fixed("/profiles/alice"),
            Self::Miss => Paths::Distinct {
                prefix: "/profiles/u",
                per_thread: MISS_IDS_PER_THREAD,
            },
        }
    }

    /// Requests per minute per caller: all wrk connections are one caller.
    fn rate_limit(self) -> u32 {
        match self {
            Self::Limiter | Self::LimiterBoxed => 1,
            Self::Hit | Self::HitNear | Self::Miss | Self::Floor | Self::Hosts | Self::HostsReuse => 1_000_000_000,
        }
    }

    /// The response every request of the workload must get.
    fn expected(self) -> (u16, Option<&'static str>) {
        match self {
            Self::Hit | Self::HitNear | Self::Floor => (200, Some("hit")),
            Self::Limiter | Self::LimiterBoxed => (429, None),
            Self::Miss => (200, Some("miss")),
            Self::Hosts | Self::HostsReuse => (200, None),
        }
    }

    /// The harness's throughput goal, as a share of native's: the penalty
    /// box is there to beat a service that asks Redis every time.
    fn throughput_goal(self) -> f64 {
        match self {
            Self::LimiterBoxed => 1.0,
            _ => 0.9,
        }
    }
}

/// What both services are run with, so they differ only in what serves.
struct Setup {
    redis: Redis,
    harness_args: Vec<String>,
    origin_db: PathBuf,
    origin_latency_ms: u64,
    harness: PathBuf,
    native: PathBuf,
    /// `wasmtime` for the `hosts` workloads; found when one is asked for.
    wasmtime: Option<PathBuf>,
    ticks: u64,
    scripts: PathBuf,
}

/// The harness, and what it is measured against: the native service, or
/// `wasmtime serve` for the `hosts` workloads.
struct Services {
    harness: Service,
    baseline: Service,
}

impl Setup {
    fn start(&self, workload: Workload) -> anyhow::Result<Services> {
        let env = [
            ("RATE_LIMIT_REQUESTS", workload.rate_limit().to_string()),
            ("RATE_LIMIT_WINDOW_SECONDS", "60".to_owned()),
        ];
        let common = |address: SocketAddr| {
            vec![
                format!("--listen={address}"),
                format!("--redis-url={}", self.redis.url()),
                format!("--origin-db={}", self.origin_db.display()),
                format!("--origin-latency-ms={}", self.origin_latency_ms),
            ]
        };
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut args = vec!["serve".to_owned()];
        args.extend(common(address));
        match workload {
            Workload::Floor => args.push(format!("--component={FLOOR_COMPONENT}")),
            Workload::Hosts | Workload::HostsReuse => args.push(format!("--component={HELLO_COMPONENT}")),
            Workload::HitNear => args.push(format!("--near-cache={NEAR_CACHE_SIZE}")),
            Workload::Hit | Workload::Limiter | Workload::LimiterBoxed | Workload::Miss => {}
        }
        if workload == Workload::Limiter {
            // Comparable with the figures from before the penalty box.
            args.push("--penalty-box-entries=0".to_owned());
        }
        args.extend(self.harness_args.iter().cloned());
        let harness = Service::start("harness", &self.harness, &args, &env, address)?;
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let baseline = if workload.ranks_hosts() {
            let wasmtime = self.wasmtime.as_ref().context("no wasmtime CLI was looked for")?;
            // `-Scli`: the whole of wasi:cli, as the harness links it; Rust's
            // standard library imports `wasi:cli/environment`, which the proxy
            // world alone lacks.
            let mut args = vec!["serve".to_owned(), "-Scli".to_owned(), format!("--addr={address}")];
            if workload == Workload::HostsReuse {
                args.push(format!("--max-instance-reuse-count={HARNESS_INSTANCE_REUSE}"));
            }
            args.push(HELLO_COMPONENT.to_owned());
            Service::start("wasmtime", wasmtime, &args, &env, address)?
        } else {
            Service::start("native", &self.native, &common(address), &env, address)?
        };
        Ok(Services { harness, baseline })
    }

    /// Empties Redis and brings it to the workload's starting state.
    fn prepare(&self, workload: Workload, service: &Service) -> anyhow::Result<()> {
        self.redis.command(&["FLUSHALL"])?;
        match workload {
            // Fills alice; for the limiter, spends the one allowed request.
            Workload::Hit | Workload::Limiter | Workload::LimiterBoxed | Workload::Floor => {
                http::Client::connect(service.address)?.get("/profiles/alice")?;
            }
            // The fill, then a hit that brings alice into the near cache
            // (the fill's FLUSHALL emptied it).
            Workload::HitNear => {
                let mut client = http::Client::connect(service.address)?;
                client.get("/profiles/alice")?;
                client.get("/profiles/alice")?;
            }
            Workload::Miss | Workload::Hosts | Workload::HostsReuse => {}
        }
        Ok(())
    }

    /// The first response of the workload from `service`, on a fresh Redis.
    fn sample(&self, workload: Workload, service: &Service) -> anyhow::Result<http::Response> {
        self.prepare(workload, service)?;
        let path = match workload.paths() {
            Paths::Fixed(path) => path.to_owned(),
            Paths::Distinct { prefix, .. } => format!("{prefix}1"),
        };
        http::Client::connect(service.address)?.get(&path)
    }

    /// Redis round trips (commands sent) per request, over `requests`
    /// sequential requests.
    fn commands_per_request(
        &self,
        workload: Workload,
        service: &Service,
        requests: u64,
    ) -> anyhow::Result<Vec<(String, f64)>> {
        self.prepare(workload, service)?;
        let mut client = http::Client::connect(service.address)?;
        if workload == Workload::LimiterBoxed {
            // Counted after the first denial, which Redis makes (unless the
            // box still holds one from before the flush: then none does).
            let first = client.get("/profiles/alice")?;
            check(workload, service.name, &first)?;
        }
        let monitor = self.redis.monitor()?;
        for n in 1..=requests {
            let path = match workload.paths() {
                Paths::Fixed(path) => path.to_owned(),
                Paths::Distinct { prefix, .. } => format!("{prefix}{n}"),
            };
            let response = client.get(&path)?;
            check(workload, service.name, &response)?;
        }
        Ok(monitor
            .finish()?
            .into_iter()
            // The near cache's heartbeat (a PING a second on its tracking
            // connection, whichever service is being counted) is no
            // request's.
            .filter(|(command, _)| !(workload == Workload::HitNear && command == "ping"))
            .map(|(command, calls)| (command, calls as f64 / requests as f64))
            .collect())
    }

    fn measure(
        &self,
        workload: Workload,
        service: &Service,
        connections: u32,
        duration: Duration,
    ) -> anyhow::Result<Measurement> {
        self.prepare(workload, service)?;
        let script = wrk::script(&self.scripts, workload.paths())?;
        let before = cpu_time(service.pid(), self.ticks)?;
        let load = wrk::run(&script, service.address, workload.paths(), connections, duration)?;
        let cpu = cpu_time(service.pid(), self.ticks)? - before;
        ensure!(
            load.socket_errors == 0,
            "{}: {} socket errors or timeouts under load",
            service.name,
            load.socket_errors
        );
        let expected_errors = match workload.expected().0 {
            // Allowed: the first request of a window that started mid-run.
            429 => load.requests.saturating_sub(2)..=load.requests,
            _ => 0..=0,
        };
        ensure!(
            expected_errors.contains(&load.error_statuses),
            "{}: {} of {} responses had an unexpected status",
            service.name,
            load.error_statuses,
            load.requests
        );
        if let Paths::Distinct { per_thread, .. } = workload.paths() {
            ensure!(
                load.requests <= per_thread,
                "the miss run needed more than {per_thread} ids; shorten --duration"
            );
        }
        Ok(Measurement { load, cpu })
    }
}

/// Fails unless `response` is what every request of `workload` gets.
fn check(workload: Workload, service: &str, response: &http::Response) -> anyhow::Result<()> {
    let (status, x_cache) = workload.expected();
    ensure!(
        response.status == status && response.header("x-cache") == x_cache,
        "{service} answered {} (x-cache {:?}) where {status} (x-cache {x_cache:?}) was expected: {}",
        response.status,
        response.header("x-cache"),
        response.body
    );
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Measurement {
    load: Load,
    cpu: Duration,
}

impl Measurement {
    fn cpu_us_per_request(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.load.requests.max(1) as f64
    }

    fn describe(&self) -> String {
        format!(
            "{:>7.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs  cpu {:>5.1} µs/req",
            self.load.requests_per_second(),
            self.load.p50_us,
            self.load.p99_us,
            self.cpu_us_per_request()
        )
    }
}

/// Harness÷native figures of one round.
#[derive(Debug, Clone, Copy)]
struct Ratios {
    throughput: f64,
    p50: f64,
    p50_extra_us: f64,
    p99: f64,
    cpu: f64,
}

impl Ratios {
    fn of(harness: &Measurement, native: &Measurement) -> Self {
        Self {
            throughput: harness.load.requests_per_second() / native.load.requests_per_second(),
            p50: harness.load.p50_us / native.load.p50_us,
            p50_extra_us: harness.load.p50_us - native.load.p50_us,
            p99: harness.load.p99_us / native.load.p99_us,
            cpu: harness.cpu_us_per_request() / native.cpu_us_per_request(),
        }
    }

    fn median(rounds: &[Self]) -> Self {
        let median_of = |pick: fn(&Self) -> f64| {
            let mut values: Vec<f64> = rounds.iter().map(pick).collect();
            values.sort_by(f64::total_cmp);
            let middle = values.len() / 2;
            if values.len().is_multiple_of(2) {
                (values[middle - 1] + values[middle]) / 2.0
            } else {
                values[middle]
            }
        };
        Self {
            throughput: median_of(|r| r.throughput),
            p50: median_of(|r| r.p50),
            p50_extra_us: median_of(|r| r.p50_extra_us),
            p99: median_of(|r| r.p99),
            cpu: median_of(|r| r.cpu),
        }
    }

    fn describe(&self) -> String {
        format!(
            "req/s {:.3}  p50 {:.3} ({:+.1} µs)  p99 {:.3}  cpu/req {:.3}",
            self.throughput, self.p50, self.p50_extra_us, self.p99, self.cpu
        )
    }
}

/// A line of the final verdict.
struct Target {
    what: String,
    met: bool,
    /// Counted, not timed: the same on any machine, so a miss fails the run.
    structural: bool,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let rounds = options.rounds.unwrap_or(if options.quick { 1 } else { 3 });
    let duration = Duration::from_secs(options.duration.unwrap_or(if options.quick { 1 } else { 5 }));
    let warmup = Duration::from_secs(if options.quick { 1 } else { 2 });
    ensure!(rounds > 0, "--rounds must be at least 1");
    let bin_dir = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this program")?
            .to_owned(),
    };
    print_machine();

    let scratch = Scratch::new()?;
    let origin_db = scratch.path.join("origin.sqlite");
    seed_origin(&origin_db)?;
    let setup = Setup {
        redis: Redis::start()?,
        harness_args: options.harness_args.clone(),
        origin_db,
        origin_latency_ms: options.origin_latency_ms,
        harness: bin_dir.join("edge-cache"),
        native: bin_dir.join("edge-cache-native"),
        wasmtime: match options.workloads.iter().any(|w| w.ranks_hosts()) {
            true => Some(find_wasmtime(options.wasmtime.as_deref())?),
            false => None,
        },
        ticks: ticks_per_second(),
        scripts: scratch.path.clone(),
    };
    println!(
        "settings: {rounds} round(s) of {} s per series after {} s of warm-up; connections {:?}; \
         origin latency {} ms; redis-server on port {}; harness arguments {:?}",
        duration.as_secs(),
        warmup.as_secs(),
        options.connections,
        options.origin_latency_ms,
        setup.redis.port,
        options.harness_args
    );

    let mut targets = Vec::new();
    let mut floor = Vec::new();
    let mut round_trips = Vec::new();
    let mut ranking = Vec::new();
    for &workload in &options.workloads {
        let services = setup.start(workload)?;
        let name = workload.name();
        println!("\n== {name}: {}", workload_doc(workload));

        let baseline_name = services.baseline.name;
        let harness_sample = setup.sample(workload, &services.harness)?;
        let baseline_sample = setup.sample(workload, &services.baseline)?;
        check(workload, "harness", &harness_sample)?;
        if harness_sample.normalized() != baseline_sample.normalized() {
            bail!(
                "the two services answer {name} differently:\nharness: {:#?}\n{baseline_name}: {:#?}",
                harness_sample.normalized(),
                baseline_sample.normalized()
            );
        }
        println!(
            "responses: identical ({} {})",
            harness_sample.status, harness_sample.body
        );

        if !workload.ranks_hosts() {
            for service in [&services.harness, &services.baseline] {
                let commands = setup.commands_per_request(workload, service, 200)?;
                // Folded from +0.0: an empty f64 sum is -0.0, printed "-0.00".
                let total = commands.iter().fold(0.0, |total, (_, calls)| total + calls);
                let listed: Vec<String> = commands
                    .iter()
                    .map(|(command, calls)| format!("{command} {calls:.2}"))
                    .collect();
                println!(
                    "redis round trips per request, {:>7}: {total:.2} ({})",
                    service.name,
                    listed.join(", ")
                );
                if service.name == "harness" {
                    round_trips.push((workload, commands));
                }
            }
        }

        for service in [&services.harness, &services.baseline] {
            setup.measure(workload, service, 32, warmup)?;
        }
        for &connections in &options.connections {
            let mut ratios = Vec::new();
            for round in 0..rounds {
                let order = if round % 2 == 0 {
                    [&services.harness, &services.baseline]
                } else {
                    [&services.baseline, &services.harness]
                };
                let mut measured = Vec::new();
                for service in order {
                    measured.push((service.name, setup.measure(workload, service, connections, duration)?));
                }
                let of = |who: &str| measured.iter().find(|(name, _)| *name == who).expect("both ran").1;
                let (harness, baseline) = (of("harness"), of(baseline_name));
                let round_ratios = Ratios::of(&harness, &baseline);
                println!(
                    "{name:>7} c={connections:<2} round {}/{rounds}  harness  {}\n{:>26}{baseline_name:<8} {}\n{:>26}ratio    {}",
                    round + 1,
                    harness.describe(),
                    "",
                    baseline.describe(),
                    "",
                    round_ratios.describe()
                );
                ratios.push(round_ratios);
            }
            let median = Ratios::median(&ratios);
            println!(
                "{name:>7} c={connections:<2} median ratio (harness ÷ {baseline_name})  {}",
                median.describe()
            );
            if workload.ranks_hosts() {
                ranking.push(format!(
                    "{name} c={connections}: harness ÷ wasmtime serve req/s {:.3}, cpu/request {:.3}, p50 {:+.1} µs",
                    median.throughput, median.cpu, median.p50_extra_us
                ));
                targets.push(Target {
                    what: format!(
                        "{name} c={connections}: req/s ratio {:.3} ≥ 1.00 at cpu/request ratio {:.3} ≤ 1.00 (vs wasmtime serve)",
                        median.throughput, median.cpu
                    ),
                    met: median.throughput >= 1.0 && median.cpu <= 1.0,
                    structural: false,
                });
            } else if workload == Workload::Floor {
                floor.push(format!(
                    "floor c={connections}: req/s ratio {:.3}, cpu/request ratio {:.3}, p50 {:+.1} µs over native",
                    median.throughput, median.cpu, median.p50_extra_us
                ));
            } else if workload != Workload::Miss {
                if connections > 1 {
                    let goal = workload.throughput_goal();
                    targets.push(Target {
                        what: format!(
                            "{name} c={connections}: req/s ratio {:.3} ≥ {goal:.2}",
                            median.throughput
                        ),
                        met: median.throughput >= goal,
                        structural: false,
                    });
                    targets.push(Target {
                        what: format!("{name} c={connections}: cpu/request ratio {:.3} ≤ 1.15", median.cpu),
                        met: median.cpu <= 1.15,
                        structural: false,
                    });
                } else {
                    targets.push(Target {
                        what: format!("{name} c=1: p50 {:+.1} µs over native ≤ 20 µs", median.p50_extra_us),
                        met: median.p50_extra_us <= 20.0,
                        structural: false,
                    });
                }
            }
        }
    }

    for (workload, commands) in &round_trips {
        let calls = |name: &str| {
            commands
                .iter()
                .find(|(command, _)| command == name)
                .map_or(0.0, |(_, calls)| *calls)
        };
        let total = commands.iter().fold(0.0, |total, (_, calls)| total + calls);
        match workload {
            Workload::Limiter => targets.push(Target {
                what: format!("fixed-window check = {total:.2} round trip (evalsha {:.2})", calls("evalsha")),
                met: total == 1.0 && calls("evalsha") == 1.0,
                structural: true,
            }),
            Workload::LimiterBoxed => targets.push(Target {
                what: format!("penalty box: {total:.3} Redis commands per request after the first denial ≤ 0.01"),
                met: total <= 0.01,
                structural: true,
            }),
            Workload::Hit => targets.push(Target {
                what: format!(
                    "cache hit = {:.2} round trip (get; the request's total {total:.2} includes the fixed-window check)",
                    total - calls("evalsha")
                ),
                met: total == 2.0 && calls("get") == 1.0 && calls("evalsha") == 1.0,
                structural: true,
            }),
            Workload::HitNear => {
                targets.push(Target {
                    what: format!(
                        "near-cache hit = {:.2} round trip (the request's total {total:.2} is the fixed-window check)",
                        total - calls("evalsha")
                    ),
                    met: total == 1.0 && calls("evalsha") == 1.0,
                    structural: true,
                })
            }
            Workload::Miss | Workload::Floor | Workload::Hosts | Workload::HostsReuse => {}
        }
    }
    println!("\n== targets (medians of the rounds above)");
    for target in &targets {
        println!("{} {}", if target.met { "met   " } else { "MISSED" }, target.what);
    }
    if !floor.is_empty() {
        println!(
            "\n== the floor: what serving any edge function through wasi:http costs before its own work \
             (bench/floor, the hit path's host calls alone)"
        );
        for line in &floor {
            println!("{line}");
        }
    }
    if !ranking.is_empty() {
        println!(
            "\n== the harness ranked against wasmtime serve {WASMTIME_VERSION} (bench/hello: fixed bytes, \
             no imports beyond WASI)"
        );
        for line in &ranking {
            println!("{line}");
        }
    }
    // Timings depend on the machine and its load, so a missed one is
    // reported, not failed; a request that costs another Redis round trip is
    // a change in behaviour.
    let broken: Vec<&str> = targets
        .iter()
        .filter(|target| target.structural && !target.met)
        .map(|target| target.what.as_str())
        .collect();
    ensure!(broken.is_empty(), "round trips per request changed: {broken:?}");
    Ok(())
}

fn workload_doc(workload: Workload) -> &'static str {
    match workload {
        Workload::Hit => "GET /profiles/alice, a cache hit every time (fixed-window check + cache lookup)",
        Workload::HitNear => {
            "GET /profiles/alice, a hit every time, the harness with --near-cache: the fixed-window check in Redis, \
             the lookup in the harness (native: both in Redis)"
        }
        Workload::Limiter => {
            "GET /profiles/alice over the caller's limit: the fixed-window check alone, 429 (penalty box off)"
        }
        Workload::LimiterBoxed => {
            "GET /profiles/alice over the caller's limit, penalty box on: denied from memory after the first denial, 429"
        }
        Workload::Miss => "GET /profiles/u{n}, a new profile each request: check, lookup, lock, origin, store, unlock",
        Workload::Floor => {
            "GET /profiles/alice served by bench/floor: the hit path's host calls and a fixed answer, no logic"
        }
        Workload::Hosts => {
            "bench/hello served by the harness and by `wasmtime serve` (defaults: a fresh instance per request)"
        }
        Workload::HostsReuse => {
            "bench/hello served by the harness and by `wasmtime serve --max-instance-reuse-count 100` (as the harness)"
        }
    }
}

/// The `wasmtime` CLI to rank the harness against: `explicit`, else the one
/// `scripts/setup --bench` installed, else `wasmtime` on `PATH`; it must be
/// [`WASMTIME_VERSION`], so that both hosts run the same runtime.
fn find_wasmtime(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let installed = std::env::var_os("HOME").map(|home| {
        PathBuf::from(home).join(format!(
            ".cache/edge-cache/wasmtime-cli-{WASMTIME_VERSION}/bin/wasmtime"
        ))
    });
    let candidate = match (explicit, installed) {
        (Some(path), _) => path.to_owned(),
        (None, Some(path)) if path.is_file() => path,
        (None, _) => PathBuf::from("wasmtime"),
    };
    let hint = "install it with `scripts/setup --bench` (a cached `cargo install`, about 15 minutes the first time), \
                or leave the hosts workloads out with `--workloads hit,limiter,miss,floor`";
    let output = std::process::Command::new(&candidate)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {} for the hosts workloads: {hint}", candidate.display()))?;
    let version = String::from_utf8_lossy(&output.stdout);
    ensure!(
        version.split_whitespace().nth(1) == Some(WASMTIME_VERSION),
        "{} is {:?}, not wasmtime {WASMTIME_VERSION}: {hint}",
        candidate.display(),
        version.trim()
    );
    Ok(candidate)
}

/// Profiles `u1`, `u2`, … for the miss path (two wrk threads' worth).
fn seed_origin(path: &Path) -> anyhow::Result<()> {
    let origin = Origin::open(&OriginConfig {
        database: Some(path.to_owned()),
        latency: Duration::ZERO,
    })?;
    let profiles = (1..=2 * MISS_IDS_PER_THREAD).map(|n| {
        let profile = format!(r#"{{"id":"u{n}","name":"User {n}","plan":"free","country":"US"}}"#);
        (format!("u{n}"), profile)
    });
    origin.import(profiles)?;
    Ok(())
}

fn print_machine() {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .map(|out| {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.lines().next().unwrap_or_default().to_owned()
            })
            .unwrap_or_else(|_| format!("{program}: not found"))
    };
    println!(
        "machine: {cpus} CPUs ({model}), Linux {}; {}; {}",
        read("/proc/sys/kernel/osrelease").trim(),
        version("wrk", "-v"),
        version("redis-server", "--version")
    );
}

/// A private directory for the run, removed at the end.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("edge-cache-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
