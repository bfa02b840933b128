//! `<binary> healthcheck`: a container probe built into every service binary.
//!
//! Small runtime images (distroless) have no shell, curl or wget, so Docker's `HEALTHCHECK` runs
//! the service binary itself: `gateway healthcheck` asks the running service's `/readyz` on
//! loopback and exits 0 when it answers 2xx, 1 otherwise. `main` checks for it before parsing
//! the configuration, so a probe never needs the service's settings to be valid.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// The argument that selects probe mode.
pub const HEALTHCHECK_ARG: &str = "healthcheck";

/// How long the probe waits for the service, connect and answer each.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// When the first argument is `healthcheck`, probe the service and return the exit code;
/// otherwise `None` and `main` carries on. The port is `PORT` or `default_port`, the address
/// `BIND_ADDR` when it names one host, else 127.0.0.1.
pub fn healthcheck_from_args(default_port: u16) -> Option<ExitCode> {
    if std::env::args().nth(1).as_deref() != Some(HEALTHCHECK_ARG) {
        return None;
    }
    let port = match std::env::var("PORT") {
        Ok(value) if !value.trim().is_empty() => match value.trim().parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                eprintln!("healthcheck: PORT={value:?} is not a port number");
                return Some(ExitCode::FAILURE);
            }
        },
        _ => default_port,
    };
    let host = std::env::var("BIND_ADDR")
        .ok()
        .and_then(|value| value.trim().parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let addr = SocketAddr::new(host, port);
    Some(match probe_ready(addr) {
        Ok(200..=299) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("healthcheck: http://{addr}/readyz answered {status}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("healthcheck: http://{addr}/readyz: {error}");
            ExitCode::FAILURE
        }
    })
}

/// `GET /readyz` over plain HTTP/1.1; the status code of the answer.
pub fn probe_ready(addr: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: shopstack-healthcheck\r\nConnection: close\r\n\r\n"
    )?;
    // The status line fits in the first few bytes; the body is not needed.
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        let read = stream.read(&mut head[filled..])?;
        if read == 0 {
            break;
        }
        filled += read;
        if head[..filled].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..filled]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP answer: {line:?}"),
            )
        })
}
