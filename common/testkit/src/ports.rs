//! Loopback addresses with a known behaviour: a free port, a closed one, one that never answers.

/// A free loopback port (bound, then released for the caller to bind).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A base URL where a connection is accepted and never answered: a hung dependency.
pub async fn black_hole() -> String {
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        return "http://127.0.0.1:9".to_owned();
    };
    let addr = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

/// A base URL nothing listens on: a dependency that is down.
pub async fn closed_port() -> String {
    let port = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener.local_addr().map(|addr| addr.port()).unwrap_or(9),
        Err(_) => 9,
    };
    format!("http://127.0.0.1:{port}")
}
