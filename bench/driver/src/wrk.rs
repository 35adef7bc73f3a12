//! Load from wrk (Debian's package): a Lua script picks the paths and
//! reports the figures in one line the driver parses.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub requests: u64,
    pub duration: Duration,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Responses with a status of 400 or more.
    pub error_statuses: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
}

impl Load {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64()
    }
}

/// How wrk picks the request path.
#[derive(Debug, Clone, Copy)]
pub enum Paths {
    /// The same path every time.
    Fixed(&'static str),
    /// `{prefix}{n}` with a distinct `n` per request: thread `t` of wrk uses
    /// `t * per_thread ..`, so no two requests of a run share a path.
    Distinct { prefix: &'static str, per_thread: u64 },
}

const REPORT: &str = r#"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH-RESULT %d %d %.1f %.1f %d %d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"#;

/// Writes the Lua script for `paths` into `dir`.
pub fn script(dir: &Path, paths: Paths) -> anyhow::Result<PathBuf> {
    let picker = match paths {
        // No `request` function: wrk then reuses one prebuilt request, its fastest mode.
        Paths::Fixed(_) => String::new(),
        Paths::Distinct { prefix, per_thread } => format!(
            r#"
local threads = 0
function setup(thread)
  thread:set("first", threads * {per_thread})
  threads = threads + 1
end
local n = 0
function request()
  n = n + 1
  return wrk.format("GET", "{prefix}" .. string.format("%d", first + n))
end
"#
        ),
    };
    let path = dir.join(match paths {
        Paths::Fixed(_) => "fixed.lua",
        Paths::Distinct { .. } => "distinct.lua",
    });
    std::fs::write(&path, format!("{picker}{REPORT}"))?;
    Ok(path)
}

/// Runs wrk against `address` for `duration` with `connections`.
pub fn run(
    script: &Path,
    address: SocketAddr,
    paths: Paths,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<Load> {
    let path = match paths {
        Paths::Fixed(path) => path,
        Paths::Distinct { .. } => "/",
    };
    let threads = connections.min(2);
    let output = Command::new("wrk")
        .arg(format!("--threads={threads}"))
        .arg(format!("--connections={connections}"))
        .arg(format!("--duration={}s", duration.as_secs().max(1)))
        .arg("--timeout=5s")
        .arg(format!("--script={}", script.display()))
        .arg(format!("http://{address}{path}"))
        .output()
        .map_err(|error| anyhow::anyhow!("cannot run wrk ({error}); install it with `apt-get install -y wrk`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("BENCH-RESULT "))
        .with_context(|| format!("no result line in wrk's output: {stdout}"))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("unexpected wrk result {line:?}"))?;
    let [requests, duration_us, p50_us, p99_us, error_statuses, socket_errors] = fields[..] else {
        bail!("unexpected wrk result {line:?}");
    };
    Ok(Load {
        requests: requests as u64,
        duration: Duration::from_micros(duration_us as u64),
        p50_us,
        p99_us,
        error_statuses: error_statuses as u64,
        socket_errors: socket_errors as u64,
    })
}
