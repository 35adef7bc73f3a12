//! The binary carries its edge function: copied anywhere and run from any
//! directory, it serves the demo without the build directory it came from.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn a_copied_binary_serves_the_demo_from_anywhere() {
    let dir = std::env::temp_dir().join(format!("edge-cache-relocated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("edge-cache");
    std::fs::copy(env!("CARGO_BIN_EXE_edge-cache"), &binary).unwrap();

    let help = Command::new(&binary).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(!help.contains("target/"), "--help names a build directory:\n{help}");

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Command::new(&binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(&dir)
        .env_remove("EDGE_CACHE_COMPONENT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Killed(server);
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        match get(port, "/profiles/alice") {
            Ok(answer) => break answer,
            Err(error) => {
                assert!(Instant::now() < deadline, "the copy did not serve: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"alice\""), "{answer}");
    let _ = std::fs::remove_dir_all(&dir);
}
