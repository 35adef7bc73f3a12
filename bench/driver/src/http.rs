//! A minimal HTTP/1.1 client over one keep-alive connection: enough to check
//! that both services answer alike and to count Redis calls per request,
//! without a client library's own behaviour in the way.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Lower-case names, sorted.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(address: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    pub fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        write!(self.writer, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').context("malformed header")?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        headers.sort();
        let length: usize = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse().ok())
            .with_context(|| format!("GET {path}: no content-length (chunked bodies are not expected)"))?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        let body = String::from_utf8(body)?;
        if headers
            .iter()
            .any(|(name, value)| name == "connection" && value == "close")
        {
            bail!("GET {path}: the server closed the connection");
        }
        Ok(Response { status, headers, body })
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// The response without what depends on the moment it was made (the
    /// date, seconds until the window resets), for comparing two services.
    pub fn normalized(&self) -> Self {
        let headers = self
            .headers
            .iter()
            .filter(|(name, _)| name != "date")
            .map(|(name, value)| {
                let value = match name.as_str() {
                    "x-ratelimit-reset" | "retry-after" => "<seconds>".to_owned(),
                    "ratelimit" => value.split(";t=").next().unwrap_or_default().to_owned() + ";t=<seconds>",
                    _ => value.clone(),
                };
                (name.clone(), value)
            })
            .collect();
        let body = match self.body.split_once("retry in ") {
            Some((before, after)) => {
                let after = after.trim_start_matches(|c: char| c.is_ascii_digit());
                format!("{before}retry in <seconds>{after}")
            }
            None => self.body.clone(),
        };
        Self {
            status: self.status,
            headers,
            body,
        }
    }
}
