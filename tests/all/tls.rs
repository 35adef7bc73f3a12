//! `rediss://` against a real `redis-server` speaking TLS only, with a CA,
//! a server and a client certificate made by this run: a private CA is
//! trusted through `--redis-ca-file`, and mutual TLS works with a client
//! certificate.

use edge_cache_harness::store::redis::{RedisConfig, TlsFiles};
use edge_cache_harness::{Harness, HarnessConfig, StoreConfig};
use edge_cache_tests::{RedisServer, Served, config};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// PEM files of a fresh CA, a server certificate for 127.0.0.1 and a
/// client certificate, both signed by the CA; removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("edge-cache-pki-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "edge-cache test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let write = |file: &str, pem: String| std::fs::write(dir.join(file), pem).unwrap();
        write("ca.pem", ca_cert.pem());
        for (who, names) in [
            ("server", vec!["127.0.0.1".to_owned(), "localhost".to_owned()]),
            ("client", vec![]),
        ] {
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("edge-cache test {who}"));
            let key = KeyPair::generate().unwrap();
            write(&format!("{who}.pem"), params.signed_by(&key, &issuer).unwrap().pem());
            write(&format!("{who}-key.pem"), key.serialize_pem());
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// A server with these certificates; clients must present one when
    /// `mutual`.
    fn server(&self, mutual: bool) -> RedisServer {
        let args = [
            "--tls-cert-file".to_owned(),
            self.arg("server.pem"),
            "--tls-key-file".to_owned(),
            self.arg("server-key.pem"),
            "--tls-ca-cert-file".to_owned(),
            self.arg("ca.pem"),
            "--tls-auth-clients".to_owned(),
            if mutual { "yes" } else { "no" }.to_owned(),
        ];
        RedisServer::start_tls(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_backend(server: &RedisServer, tls: TlsFiles) -> StoreConfig {
    StoreConfig::Redis(RedisConfig {
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(3),
        tls,
        // A handshake that fails must fail the start here, not be retried.
        required: true,
        ..RedisConfig::new(format!("rediss://127.0.0.1:{}", server.port()))
    })
}

fn trusting(pki: &Pki) -> TlsFiles {
    TlsFiles {
        ca_file: Some(pki.path("ca.pem")),
        ..TlsFiles::default()
    }
}

async fn start_error(store: StoreConfig) -> String {
    match Harness::start(&HarnessConfig {
        store,
        ..HarnessConfig::default()
    })
    .await
    {
        Ok(_) => panic!("the harness started"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_serves_and_caches() {
    let pki = Pki::new("ca");
    let server = pki.server(false);
    let served = Served::start(config(tls_backend(&server, trusting(&pki)))).await;
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "miss");
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "hit");

    // Without the CA, the server's certificate is not trusted.
    let message = start_error(tls_backend(&server, TlsFiles::default())).await;
    assert!(
        message.contains("cannot reach Redis at rediss://127.0.0.1"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new("mtls");
    let server = pki.server(true);
    let with_client = TlsFiles {
        client_cert_file: Some(pki.path("client.pem")),
        client_key_file: Some(pki.path("client-key.pem")),
        ..trusting(&pki)
    };
    let served = Served::start(config(tls_backend(&server, with_client))).await;
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "miss");
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "hit");

    let message = start_error(tls_backend(&server, trusting(&pki))).await;
    assert!(message.contains("rediss://127.0.0.1"), "{message}");
}

#[tokio::test]
async fn tls_settings_are_checked_before_connecting() {
    let pki = Pki::new("settings");
    let server_port = 1; // never reached: the settings fail first
    let store = |url: &str, tls: TlsFiles| {
        StoreConfig::Redis(RedisConfig {
            tls,
            ..RedisConfig::new(url)
        })
    };
    let url = format!("rediss://127.0.0.1:{server_port}");
    let missing = start_error(store(
        &url,
        TlsFiles {
            ca_file: Some(Path::new("/nonexistent/ca.pem").into()),
            ..TlsFiles::default()
        },
    ))
    .await;
    assert!(missing.contains("cannot read /nonexistent/ca.pem"), "{missing}");
    let half = start_error(store(
        &url,
        TlsFiles {
            client_cert_file: Some(pki.path("client.pem")),
            ..TlsFiles::default()
        },
    ))
    .await;
    assert!(half.contains("needs its key"), "{half}");
    let plain = start_error(store("redis://127.0.0.1:1", trusting(&pki))).await;
    assert!(plain.contains("rediss://"), "{plain}");
}
