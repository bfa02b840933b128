//! One upstream service seen from a caller: its replicas, taken in turn, and calls to them
//! through the service kit's traced client, each bounded by one timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use shopstack_platform::client::HttpClient;

/// A call that did not get an answer, or got one it could not use.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("{service} did not answer within {timeout:?}")]
    Timeout {
        service: &'static str,
        timeout: Duration,
    },
    #[error("{service} is unavailable: {cause}")]
    Unavailable { service: &'static str, cause: String },
    #[error("{service} answered {status}: {body}")]
    Unexpected {
        service: &'static str,
        status: u16,
        body: String,
    },
}

impl UpstreamError {
    pub fn service(&self) -> &'static str {
        match self {
            UpstreamError::Timeout { service, .. }
            | UpstreamError::Unavailable { service, .. }
            | UpstreamError::Unexpected { service, .. } => service,
        }
    }
}

/// The replicas of one service (`service` names it in client spans and errors), used in turn.
#[derive(Clone)]
pub struct Upstream {
    service: &'static str,
    client: HttpClient,
    replicas: Arc<[Url]>,
    next: Arc<AtomicUsize>,
    timeout: Duration,
}

impl Upstream {
    pub fn new(service: &'static str, client: HttpClient, replicas: Vec<Url>, timeout: Duration) -> Self {
        // A base without a trailing slash would lose its last segment in `Url::join`.
        let replicas: Vec<Url> = replicas
            .into_iter()
            .map(|mut url| {
                if !url.path().ends_with('/') {
                    url.set_path(&format!("{}/", url.path()));
                }
                url
            })
            .collect();
        Self {
            service,
            client,
            replicas: replicas.into(),
            next: Arc::new(AtomicUsize::new(0)),
            timeout,
        }
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Send `method path` (relative to the next replica's base, with an optional JSON body and
    /// headers) and return the answer with its body unread; `route` names the callee's route
    /// template for the client span.
    ///
    /// A replica that refuses the connection (a crashed process, a pod gone) never saw the
    /// request, so the next replica is tried — for any method, writes included — until each has
    /// been tried once; without this, every other call would fail while one replica is down.
    /// Any other failure (a timeout, a connection cut after the request was sent) is returned:
    /// the request may have been served.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        route: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Response, UpstreamError> {
        let mut refused = None;
        // The replicas from this call's turn on, each once: taken from one draw of the shared
        // counter, since concurrent calls move it between two attempts of this one.
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for offset in 0..self.replicas.len() {
            let base = self
                .replicas
                .get((first + offset) % self.replicas.len())
                .ok_or_else(|| self.unavailable("no replica configured"))?;
            let url = base
                .join(path)
                .map_err(|error| self.unavailable(format!("bad URL: {error}")))?;
            let mut builder = self
                .client
                .inner()
                .request(method.clone(), url)
                .timeout(self.timeout);
            if let Some(body) = body {
                builder = builder.json(body);
            }
            for (name, value) in headers {
                builder = builder.header(*name, value);
            }
            let request = builder
                .build()
                .map_err(|error| self.unavailable(error.to_string()))?;
            match self.client.send(self.service, route, request).await {
                Ok(response) => return Ok(response),
                Err(error) if error.is_connect() && !error.is_timeout() => {
                    refused = Some(self.transport_error(&error));
                }
                Err(error) => return Err(self.transport_error(&error)),
            }
        }
        Err(refused.unwrap_or_else(|| self.unavailable("no replica configured")))
    }

    /// [`Upstream::send`], then read the whole body as JSON (`Null` when it is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        route: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Value), UpstreamError> {
        let response = self.send(method, path, route, body, headers).await?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.transport_error(&error))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// True when the service answers `/livez`.
    pub async fn live(&self) -> bool {
        self.call(Method::GET, "livez", "/livez", None, &[])
            .await
            .is_ok_and(|(status, _)| status.is_success())
    }

    /// A body read by [`Upstream::call`] as a `T`; one that does not fit is unexpected.
    pub fn decode<T: DeserializeOwned>(&self, status: StatusCode, body: Value) -> Result<T, UpstreamError> {
        serde_json::from_value(body.clone()).map_err(|error| {
            self.unexpected(
                status,
                &serde_json::json!({"error": error.to_string(), "body": body}),
            )
        })
    }

    pub fn unavailable(&self, cause: impl Into<String>) -> UpstreamError {
        UpstreamError::Unavailable {
            service: self.service,
            cause: cause.into(),
        }
    }

    /// An answer the caller cannot use; the body (at most 300 bytes of it) says why.
    pub fn unexpected(&self, status: StatusCode, body: &Value) -> UpstreamError {
        let mut text = body.to_string();
        // At a character boundary: `truncate` panics inside a multi-byte character.
        let mut end = text.len().min(300);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        UpstreamError::Unexpected {
            service: self.service,
            status: status.as_u16(),
            body: text,
        }
    }

    /// The replicas in turn, one per call.
    #[cfg(test)]
    fn next_base(&self) -> Option<&Url> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.replicas.len().max(1);
        self.replicas.get(index)
    }

    fn transport_error(&self, error: &reqwest::Error) -> UpstreamError {
        if error.is_timeout() {
            UpstreamError::Timeout {
                service: self.service,
                timeout: self.timeout,
            }
        } else {
            self.unavailable(error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn upstream(replicas: &[&str]) -> Upstream {
        let replicas = replicas.iter().map(|url| Url::parse(url).unwrap()).collect();
        Upstream::new(
            "catalog",
            HttpClient::new().unwrap(),
            replicas,
            Duration::from_secs(1),
        )
    }

    #[test]
    fn replicas_are_taken_in_turn_and_keep_their_base_path() {
        let upstream = upstream(&["http://a:1/prefix", "http://b:2"]);
        let bases: Vec<String> = (0..3)
            .map(|_| upstream.next_base().unwrap().join("livez").unwrap().to_string())
            .collect();
        assert_eq!(
            bases,
            [
                "http://a:1/prefix/livez",
                "http://b:2/livez",
                "http://a:1/prefix/livez"
            ]
        );
    }

    /// A loopback server that answers every request `200 {"ok":true}`, and how many it got.
    async fn answering() -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    // One request per connection: the answer closes it.
                    if socket.read(&mut buffer).await.unwrap_or(0) > 0 {
                        count.fetch_add(1, Ordering::Relaxed);
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}")
                            .await;
                    }
                });
            }
        });
        (url, served)
    }

    /// A port nothing listens on: connections to it are refused.
    fn refusing() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        url
    }

    #[tokio::test]
    async fn a_replica_that_refuses_connections_is_passed_over_for_writes_too() {
        let (live, served) = answering().await;
        let dead = refusing();
        let upstream = upstream(&[&dead, &live]);
        for _ in 0..6 {
            let (status, body) = upstream
                .call(Method::DELETE, "v1/cart/u-1", "/v1/cart/{user_id}", None, &[])
                .await
                .unwrap();
            assert_eq!((status, body), (StatusCode::OK, serde_json::json!({"ok": true})));
        }
        assert_eq!(served.load(Ordering::Relaxed), 6, "each call served once");
    }

    #[tokio::test]
    async fn concurrent_calls_each_reach_the_replica_that_answers() {
        let (live, served) = answering().await;
        let upstream = upstream(&[&refusing(), &live, &refusing()]);
        let calls: Vec<_> = (0..30)
            .map(|_| {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    upstream
                        .call(Method::POST, "v1/cart/u-1", "/v1/cart/{user_id}", None, &[])
                        .await
                        .map(|(status, _)| status)
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), StatusCode::OK);
        }
        assert_eq!(served.load(Ordering::Relaxed), 30);
    }

    #[tokio::test]
    async fn every_replica_refusing_is_unavailable() {
        let upstream = upstream(&[&refusing(), &refusing()]);
        let error = upstream
            .call(Method::GET, "livez", "/livez", None, &[])
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                UpstreamError::Unavailable {
                    service: "catalog",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn an_unexpected_answer_keeps_300_bytes_of_its_body() {
        let error =
            upstream(&["http://a:1"]).unexpected(StatusCode::BAD_GATEWAY, &Value::String("x".repeat(400)));
        let UpstreamError::Unexpected {
            service,
            status,
            body,
        } = error
        else {
            panic!("unexpected answer: {error:?}");
        };
        assert_eq!((service, status, body.len()), ("catalog", 502, 300));
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let error =
            upstream(&["http://a:1"]).unexpected(StatusCode::BAD_GATEWAY, &Value::String("é".repeat(400)));
        let UpstreamError::Unexpected { body, .. } = error else {
            panic!("unexpected answer: {error:?}");
        };
        assert!(body.len() <= 300 && body.len() >= 298, "{}", body.len());
    }
}
