//! What the shoppers saw, from the load test's request log (Goose's `--request-log`, JSON
//! lines): requests, errors and p99 per second, each fault's failover window, the requests
//! that waited past their deadline, and the users whose carts held stock.

use std::collections::BTreeSet;
use std::io::BufRead as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// One line of Goose's request log (the fields read here).
#[derive(Debug, Clone, Deserialize)]
pub struct LoggedRequest {
    /// Milliseconds since the load began, when the request was sent.
    pub elapsed: u64,
    /// Milliseconds until the answer (or until the client gave up).
    pub response_time: u64,
    /// 0 when nothing answered.
    pub status_code: u16,
    #[serde(default)]
    pub error: String,
    pub raw: RawRequest,
    /// A second record for a request already logged (Goose's `set_failure`/`set_success`).
    #[serde(default)]
    pub update: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawRequest {
    pub url: String,
    #[serde(default)]
    pub body: String,
}

impl LoggedRequest {
    /// An error a shopper saw: a 5xx or no answer at all (a 4xx is an answer the shopper can
    /// act on: out of stock, an empty cart, a key still in flight).
    pub fn is_error(&self) -> bool {
        self.status_code == 0 || self.status_code >= 500
    }

    fn sent_s(&self) -> f64 {
        self.elapsed as f64 / 1000.0
    }

    fn done_s(&self) -> f64 {
        (self.elapsed + self.response_time) as f64 / 1000.0
    }
}

/// Every request of the log at `path`.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<LoggedRequest>> {
    let file = std::fs::File::open(path).with_context(|| format!("the request log {}", path.display()))?;
    let mut requests = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let request: LoggedRequest = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {}: not a Goose request record",
                path.display(),
                index + 1
            )
        })?;
        if !request.update {
            requests.push(request);
        }
    }
    Ok(requests)
}

/// One second of the load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the load began (requests sent in [second, second + 1)).
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    /// The 99th percentile response time of the second's requests, in milliseconds (nearest
    /// rank); `None` for a second without requests.
    pub p99_ms: Option<u64>,
}

/// Requests, errors and p99 for every second of `duration`.
pub fn per_second(requests: &[LoggedRequest], duration: Duration) -> Vec<Second> {
    let seconds = duration.as_secs_f64().ceil() as u64;
    let mut times: Vec<Vec<u64>> = vec![Vec::new(); seconds as usize];
    let mut errors = vec![0u64; seconds as usize];
    for request in requests {
        let second = (request.elapsed / 1000) as usize;
        if second < times.len() {
            times[second].push(request.response_time);
            errors[second] += u64::from(request.is_error());
        }
    }
    times
        .into_iter()
        .zip(errors)
        .enumerate()
        .map(|(second, (mut took, errors))| {
            took.sort_unstable();
            let p99_ms = (!took.is_empty()).then(|| {
                let rank = ((took.len() as f64) * 0.99).ceil() as usize;
                took[rank.clamp(1, took.len()) - 1]
            });
            Second {
                second: second as u64,
                requests: took.len() as u64,
                errors,
                p99_ms,
            }
        })
        .collect()
}

/// The errors attributed to one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    pub errors: u64,
    /// When the first of them was sent, seconds since the load began.
    pub first_error_s: f64,
    /// When the last of them ended.
    pub last_error_s: f64,
    pub length_s: f64,
}

/// Requests sent this long before an event fail with it (they were in flight).
const IN_FLIGHT: f64 = 0.5;

/// For each event (its time, seconds since the load began, in time order), the errors sent
/// from just before it until just before the next event (the last until `end_s`), so each
/// error counts for one event: first error → last error, or `None` when there were none.
pub fn windows(requests: &[LoggedRequest], events_s: &[f64], end_s: f64) -> Vec<Option<Window>> {
    events_s
        .iter()
        .enumerate()
        .map(|(index, at)| {
            let from = at - IN_FLIGHT;
            let until = events_s.get(index + 1).map_or(end_s, |next| next - IN_FLIGHT);
            let seen: Vec<&LoggedRequest> = requests
                .iter()
                .filter(|request| request.is_error() && request.sent_s() >= from && request.sent_s() < until)
                .collect();
            let first = seen.iter().map(|request| request.sent_s()).reduce(f64::min)?;
            let last = seen.iter().map(|request| request.done_s()).reduce(f64::max)?;
            Some(Window {
                errors: seen.len() as u64,
                first_error_s: first,
                last_error_s: last,
                length_s: last - first,
            })
        })
        .collect()
}

/// Scheduling on a loaded machine: what a request may take beyond the client's timeout.
const MARGIN_MS: u64 = 500;

/// Requests that waited past the client's deadline: no answer within `client_timeout` (the
/// client gave up), or longer than it plus a scheduling margin in any case.
pub fn past_deadline(requests: &[LoggedRequest], client_timeout: Duration) -> Vec<&LoggedRequest> {
    let timeout_ms = client_timeout.as_millis() as u64;
    requests
        .iter()
        .filter(|request| {
            request.response_time > timeout_ms + MARGIN_MS
                || (request.status_code == 0 && request.response_time + 50 >= timeout_ms)
        })
        .collect()
}

/// The users whose carts the shoppers filled: from `/v1/cart/{user}`, `/cart/{user}` and
/// `/api/users/{user}/orders` paths, and `user_id` in request bodies.
pub fn cart_owners(requests: &[LoggedRequest]) -> BTreeSet<String> {
    let mut owners = BTreeSet::new();
    for request in requests {
        let path = request
            .raw
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|slash| &rest[slash..]))
            .unwrap_or(&request.raw.url);
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').filter(|segment| !segment.is_empty()).collect();
        let owner = match segments.as_slice() {
            ["v1", "cart", user, ..] => Some(*user),
            ["cart", user, ..] if !matches!(*user, "add" | "remove" | "update" | "clear") => Some(*user),
            ["api", "users", user, ..] => Some(*user),
            _ => None,
        };
        owners.extend(owner.map(str::to_owned));
        if let Ok(body) = serde_json::from_str::<serde_json::Value>(&request.raw.body)
            && let Some(user) = body["user_id"].as_str()
        {
            owners.insert(user.to_owned());
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(elapsed: u64, took: u64, status: u16, url: &str) -> LoggedRequest {
        LoggedRequest {
            elapsed,
            response_time: took,
            status_code: status,
            error: String::new(),
            raw: RawRequest {
                url: url.to_owned(),
                body: String::new(),
            },
            update: false,
        }
    }

    #[test]
    fn the_log_is_read_once_per_request_and_a_bad_line_is_named() {
        let path = std::env::temp_dir().join(format!("gameday-log-{}.json", std::process::id()));
        let line = |elapsed: u64, update: bool| {
            serde_json::json!({"elapsed": elapsed, "response_time": 3, "status_code": 200, "error": "",
                "update": update, "raw": {"method": "Get", "url": "http://127.0.0.1:1/", "body": ""}})
            .to_string()
        };
        std::fs::write(
            &path,
            format!("{}\n{}\n\n{}\n", line(1, false), line(1, true), line(2, false)),
        )
        .unwrap_or_default();
        let requests = read_log(&path).unwrap_or_else(|error| panic!("{error:#}"));
        assert_eq!(
            requests.iter().map(|request| request.elapsed).collect::<Vec<_>>(),
            [1, 2]
        );
        std::fs::write(&path, format!("{}\nnot json\n", line(1, false))).unwrap_or_default();
        let error = read_log(&path)
            .err()
            .map(|error| format!("{error:#}"))
            .unwrap_or_default();
        assert!(error.contains("line 2"), "{error}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn seconds_count_requests_errors_and_p99() {
        let mut requests: Vec<LoggedRequest> = (0..100).map(|n| request(n * 5, n + 1, 200, "/")).collect();
        requests.push(request(1_200, 40, 503, "/"));
        requests.push(request(1_300, 6_000, 0, "/"));
        let seconds = per_second(&requests, Duration::from_secs(3));
        assert_eq!(seconds.len(), 3);
        assert_eq!(
            (seconds[0].requests, seconds[0].errors, seconds[0].p99_ms),
            (100, 0, Some(99))
        );
        assert_eq!(
            (seconds[1].requests, seconds[1].errors, seconds[1].p99_ms),
            (2, 2, Some(6_000))
        );
        assert_eq!((seconds[2].requests, seconds[2].p99_ms), (0, None));
    }

    #[test]
    fn each_event_owns_the_errors_until_the_next() {
        let requests = vec![
            request(9_800, 100, 503, "/"),
            request(11_000, 500, 0, "/"),
            request(12_000, 10, 200, "/"),
            request(21_000, 100, 502, "/"),
            // In flight when the third event came: its error, not the second's.
            request(29_800, 100, 0, "/"),
        ];
        let windows = windows(&requests, &[10.0, 20.0, 30.0, 35.0], 40.0);
        let first = windows[0]
            .clone()
            .unwrap_or_else(|| panic!("errors after the first event"));
        assert_eq!(first.errors, 2);
        assert!((first.first_error_s - 9.8).abs() < 1e-9);
        assert!((first.last_error_s - 11.5).abs() < 1e-9);
        assert!((first.length_s - 1.7).abs() < 1e-9);
        assert_eq!(windows[1].as_ref().map(|window| window.errors), Some(1));
        assert_eq!(windows[2].as_ref().map(|window| window.errors), Some(1));
        assert_eq!(windows[3], None);
    }

    #[test]
    fn deadlines_are_the_clients_timeout() {
        let requests = vec![
            request(0, 4_000, 504, "/"),
            request(0, 5_990, 0, "/"),
            request(0, 6_800, 200, "/"),
            request(0, 30, 0, "/"),
        ];
        let late = past_deadline(&requests, Duration::from_secs(6));
        assert_eq!(late.len(), 2);
        assert_eq!(late[0].response_time, 5_990);
        assert_eq!(late[1].response_time, 6_800);
    }

    #[test]
    fn owners_come_from_paths_and_bodies() {
        let mut requests = vec![
            request(0, 1, 200, "http://127.0.0.1:1/v1/cart/lt-a-c1/items"),
            request(0, 1, 200, "http://127.0.0.1:1/cart/lt-a-c2?x=1"),
            request(0, 1, 200, "http://127.0.0.1:1/api/users/lt-a-o3/orders?page=1"),
            request(0, 1, 200, "http://127.0.0.1:1/catalog/p1"),
            request(0, 1, 200, "http://127.0.0.1:1/cart/add"),
        ];
        requests[4].raw.body = r#"{"user_id":"lt-a-c4","product_id":"p1"}"#.to_owned();
        let owners: Vec<String> = cart_owners(&requests).into_iter().collect();
        assert_eq!(owners, ["lt-a-c1", "lt-a-c2", "lt-a-c4", "lt-a-o3"]);
    }
}
