//! Who is calling, as far as the harness can vouch for it: the client
//! address (from the peer, or from `Forwarded` / `X-Forwarded-For` when the
//! peer is a proxy the deployment trusts) and whether an API key was issued
//! by the deployment. Quotas hang off both, so neither may be minted by a
//! caller.

use hyper::HeaderMap;
use hyper::header::{FORWARDED, HeaderValue};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use thiserror::Error;

/// The header naming the client's address hop by hop (de facto standard;
/// `Forwarded` is preferred when both are present).
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Proxies whose `Forwarded` / `X-Forwarded-For` headers are believed.
///
/// The client is the rightmost address in the chain that is not a trusted
/// proxy, walking from the connection's peer leftwards (nginx's realip
/// module with `real_ip_recursive on`). Each trusted hop appended what it
/// saw, so everything left of the first untrusted address may be forged by
/// the client and is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client's address for a request that arrived from `peer`.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let hops: Vec<Option<IpAddr>> = if headers.contains_key(FORWARDED) {
            list(headers.get_all(FORWARDED).iter()).map(forwarded_for).collect()
        } else {
            list(headers.get_all(X_FORWARDED_FOR).iter()).map(parse_node).collect()
        };
        for hop in hops.into_iter().rev() {
            // An address a trusted hop could not have written (garbage,
            // `unknown`, an obfuscated name) ends the walk: the last
            // address vouched for stands.
            let Some(address) = hop else { break };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4
/// clients) count as the IPv4 address they carry.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The comma-separated elements of every instance of a header, in order.
fn list<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> impl Iterator<Item = &'a str> {
    values
        .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239 §4).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
        .and_then(|(_, value)| parse_node(value.trim().trim_matches('"')))
}

/// A node as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711` or a bare IPv6 address.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Ok(socket) = node.parse::<SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    let bracketed = node.strip_prefix('[')?.split_once(']')?.0;
    bracketed.parse::<IpAddr>().ok().map(canonical)
}

/// Why a trusted-proxy network was refused.
#[derive(Debug, Error)]
#[error("{text:?} is not an address or network like 10.0.0.0/8 or 2001:db8::/32")]
pub struct InvalidNetwork {
    text: String,
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address.
pub fn parse_network(text: &str) -> Result<IpNet, InvalidNetwork> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| InvalidNetwork { text: text.to_owned() })
}

/// The API keys the deployment issued, as SHA-256 digests: the raw keys
/// never reach the harness's configuration, logs or the cache.
///
/// A request carrying a key that is not among them is refused (401) before
/// any instance or cache round trip is spent on it, so a caller cannot mint
/// itself a quota by inventing keys. With no keys issued, every key is
/// unknown: clients without a key are limited by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(HashSet<[u8; 32]>);

/// Why an API key digest was refused.
#[derive(Debug, Error)]
pub enum InvalidApiKeys {
    #[error("line {line}: {text:?} is not a SHA-256 digest (64 hex digits)")]
    NotADigest { line: usize, text: String },
    #[error("cannot read the API key file {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

impl ApiKeys {
    /// Keys from their hex digests.
    pub fn from_digests<'a>(digests: impl IntoIterator<Item = &'a str>) -> Result<Self, InvalidApiKeys> {
        let mut keys = Self::default();
        for (index, text) in digests.into_iter().enumerate() {
            keys.insert(index + 1, text)?;
        }
        Ok(keys)
    }

    /// Adds the digests of a file: one per line; blank lines and `#`
    /// comments are skipped.
    pub fn add_file(&mut self, path: &Path) -> Result<(), InvalidApiKeys> {
        let text = std::fs::read_to_string(path).map_err(|error| InvalidApiKeys::Unreadable {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default();
            if !line.trim().is_empty() {
                self.insert(index + 1, line)?;
            }
        }
        Ok(())
    }

    /// Adds the digest written as `text`, the `line`th given.
    fn insert(&mut self, line: usize, text: &str) -> Result<(), InvalidApiKeys> {
        let text = text.trim();
        let digest = parse_digest(text).ok_or_else(|| InvalidApiKeys::NotADigest {
            line,
            text: text.chars().take(80).collect(),
        })?;
        self.0.insert(digest);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `key` is one the deployment issued.
    pub fn issued(&self, key: &[u8]) -> bool {
        !self.0.is_empty() && self.0.contains(&<[u8; 32]>::from(Sha256::digest(key)))
    }
}

/// The hex SHA-256 digest of a key, as `--api-key-sha256` takes it.
pub fn digest_hex(key: &[u8]) -> String {
    Sha256::digest(key).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0; 32];
    for (byte, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        let hex = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn proxies(networks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(networks.iter().map(|n| parse_network(n).unwrap()).collect())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
        let forged = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(proxies(&[]).client_address(ip("9.9.9.9"), &forged), ip("9.9.9.9"));
        assert_eq!(
            proxies(&["10.0.0.0/8"]).client_address(ip("9.9.9.9"), &forged),
            ip("9.9.9.9")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "192.168.1.1"]);
        // The client forged 6.6.6.6; the load balancer appended the address it saw.
        let chain = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        assert_eq!(trusted.client_address(ip("192.168.1.1"), &chain), ip("203.0.113.7"));
        // Every hop trusted: the leftmost stands.
        let internal = headers(&[("x-forwarded-for", "10.2.2.2, 10.1.1.1")]);
        assert_eq!(trusted.client_address(ip("10.0.0.1"), &internal), ip("10.2.2.2"));
        // No header: the peer itself.
        assert_eq!(
            trusted.client_address(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_is_read_per_rfc_7239_and_preferred() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let both = headers(&[
            ("x-forwarded-for", "7.7.7.7"),
            (
                "forwarded",
                "for=\"[2001:db8::1]:4711\";proto=https, For=198.51.100.2:80;by=10.0.0.2",
            ),
        ]);
        assert_eq!(trusted.client_address(ip("10.0.0.2"), &both), ip("198.51.100.2"));
        let v6 = headers(&[("forwarded", "for=\"[2001:db8::1]\"")]);
        assert_eq!(trusted.client_address(ip("10.0.0.2"), &v6), ip("2001:db8::1"));
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_vouched_address() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let garbage = headers(&[("x-forwarded-for", "1.1.1.1, not-an-ip, 10.3.3.3")]);
        assert_eq!(trusted.client_address(ip("10.0.0.1"), &garbage), ip("10.3.3.3"));
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(trusted.client_address(ip("10.0.0.1"), &unknown), ip("10.0.0.1"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let trusted = proxies(&["127.0.0.1"]);
        let chain = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            trusted.client_address(ip("::ffff:127.0.0.1"), &chain),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn networks_parse_with_or_without_a_prefix() {
        assert_eq!(parse_network("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_network(" 127.0.0.1 ").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(parse_network("::1").unwrap().to_string(), "::1/128");
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("example.com").is_err());
    }

    #[test]
    fn only_issued_keys_are_known() {
        let digest = digest_hex(b"s3cret");
        assert_eq!(
            digest,
            "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"
        );
        let keys = ApiKeys::from_digests([digest.as_str()]).unwrap();
        assert!(keys.issued(b"s3cret"));
        assert!(!keys.issued(b"s3cret2"));
        assert!(!ApiKeys::default().issued(b"s3cret"));
        assert!(ApiKeys::from_digests(["abc"]).is_err());
        assert!(ApiKeys::from_digests([&"zz".repeat(32)[..]]).is_err());
    }

    #[test]
    fn key_files_hold_digests_and_comments() {
        let path = std::env::temp_dir().join(format!("edge-cache-keys-{}", std::process::id()));
        let text = format!("# issued 2026-12\n\n{}  # team a\n", digest_hex(b"k1"));
        std::fs::write(&path, text).unwrap();
        let mut keys = ApiKeys::default();
        keys.add_file(&path).unwrap();
        assert!(keys.issued(b"k1") && keys.len() == 1);
        std::fs::write(&path, "k1\n").unwrap();
        let error = keys.add_file(&path).unwrap_err().to_string();
        assert!(error.starts_with("line 1:"), "{error}");
        std::fs::remove_file(&path).unwrap();
    }
}
