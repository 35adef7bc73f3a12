//! The processes a benchmark runs: its own redis-server and the two services,
//! each killed when its guard drops, so a run leaves nothing behind.

use anyhow::{Context, bail, ensure};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process, killed on drop.
pub struct Guard {
    child: Child,
    what: String,
}

impl Guard {
    fn spawn(command: &mut Command, what: &str) -> std::io::Result<Self> {
        let child = command.stdin(Stdio::null()).spawn()?;
        Ok(Self {
            child,
            what: what.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited.
    fn alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited early ({status})", self.what),
            None => Ok(()),
        }
    }

    /// Polls `ready` until it holds; fails if the process exits first or
    /// `limit` passes (`doing` completes "… did not {doing} within …").
    fn wait_until(&mut self, limit: Duration, doing: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while !ready() {
            self.alive()?;
            if Instant::now() > deadline {
                bail!("{} did not {doing} within {limit:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private redis-server on a free loopback port, without persistence.
pub struct Redis {
    pub port: u16,
    _process: Guard,
}

impl Redis {
    pub fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null());
        let mut process = Guard::spawn(&mut command, "redis-server").map_err(|error| {
            anyhow::anyhow!(
                "cannot start redis-server ({error}); install it with `apt-get install -y redis-server` \
                 or `scripts/setup --redis`"
            )
        })?;
        process.wait_until(Duration::from_secs(10), &format!("answer PING on port {port}"), || {
            command_on(port, &["PING"]).is_ok_and(|reply| reply == "PONG")
        })?;
        Ok(Self {
            port,
            _process: process,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command and returns its reply (a status or bulk string).
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        command_on(self.port, args)
    }

    /// Watches every command clients send (`MONITOR`) until the returned
    /// monitor is finished. Commands run inside scripts are left out: what
    /// remains are the round trips.
    pub fn monitor(&self) -> anyhow::Result<Monitor> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.write_all(b"*1\r\n$7\r\nMONITOR\r\n")?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        ensure!(line.trim_end() == "+OK", "MONITOR answered {line:?}");
        let lines = std::thread::spawn(move || reader.lines().map_while(Result::ok).collect());
        Ok(Monitor { stream, lines })
    }
}

/// Sends one command to the Redis on `port` and returns its reply.
fn command_on(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end();
    match line.split_at_checked(1) {
        Some(("+", status)) => Ok(status.to_owned()),
        Some((":", number)) => Ok(number.to_owned()),
        Some(("$", length)) => {
            let length: usize = length.parse().context("bad bulk length")?;
            let mut body = vec![0; length + 2];
            reader.read_exact(&mut body)?;
            body.truncate(length);
            Ok(String::from_utf8(body)?)
        }
        Some(("-", error)) => bail!("Redis answered {args:?} with an error: {error}"),
        _ => bail!("unexpected Redis reply {line:?}"),
    }
}

/// Commands seen by `MONITOR`.
pub struct Monitor {
    stream: TcpStream,
    lines: std::thread::JoinHandle<Vec<String>>,
}

impl Monitor {
    /// Stops watching and counts the commands clients sent, by name
    /// (lower case), sorted.
    pub fn finish(self) -> anyhow::Result<Vec<(String, u64)>> {
        // Lines still in flight arrive within moments on loopback.
        std::thread::sleep(Duration::from_millis(200));
        self.stream.shutdown(std::net::Shutdown::Both)?;
        let lines = self
            .lines
            .join()
            .map_err(|_| anyhow::anyhow!("the monitor thread panicked"))?;
        let mut counts: Vec<(String, u64)> = Vec::new();
        for line in &lines {
            // `+1700000000.000000 [0 127.0.0.1:40000] "GET" "key"`; scripts show `[0 lua]`.
            let Some((client, command)) = line.split_once("] ") else {
                continue;
            };
            if client.ends_with(" lua") {
                continue;
            }
            let name = command.split('"').nth(1).unwrap_or_default().to_ascii_lowercase();
            match counts.iter_mut().find(|(known, _)| *known == name) {
                Some((_, count)) => *count += 1,
                None => counts.push((name, 1)),
            }
        }
        counts.sort();
        Ok(counts)
    }
}

/// One of the services under test, listening on `address`.
pub struct Service {
    pub name: &'static str,
    pub address: SocketAddr,
    process: Guard,
}

impl Service {
    /// Starts `program` with `args` and `env`, and waits until it answers HTTP.
    pub fn start(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        address: SocketAddr,
    ) -> anyhow::Result<Self> {
        if !program.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --release`",
                program.display()
            );
        }
        let mut command = Command::new(program);
        command.args(args).stdout(Stdio::null()).env("RUST_LOG", "warn");
        for (key, value) in env {
            command.env(key, value);
        }
        let process = Guard::spawn(&mut command, name).with_context(|| format!("cannot start {name}"))?;
        let mut service = Self { name, address, process };
        // The first start of the harness compiles the component (cached after).
        service
            .process
            .wait_until(Duration::from_secs(120), &format!("listen on {address}"), || {
                TcpStream::connect(address).is_ok()
            })?;
        Ok(service)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// CPU time (user + system) a process has used, all its threads included.
pub fn cpu_time(pid: u32, ticks_per_second: u64) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = stat.rsplit_once(") ").context("unexpected /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; `rest` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / ticks_per_second))
}

/// The kernel's clock tick rate for /proc times (`getconf CLK_TCK`).
pub fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}
