//! The truth check: what the run sent, route by route, against the delta of the gateway's own
//! `http_requests_total` between a scrape before and a scrape after the run. Metrics that lie
//! are worse than none, so a gap over the tolerance fails the run.
//!
//! Left out on both sides: the probe and scrape routes (`/metrics`, `/healthz`, …), which
//! Prometheus, Kubernetes and the poller all hit, and the gateway's `unmatched` route (strangers'
//! 404s). Everything else the tool sends during the run (the fault steps' admin `PUT`s) is
//! added to the "sent" side exactly. A request that got no answer at all is not compared (the
//! gateway may or may not have seen it) and is listed apart.

use std::collections::BTreeMap;

use serde::Serialize;

/// Routes every scraper and probe hits: not compared.
pub const EXCLUDED_ROUTES: &[&str] = &["/metrics", "/healthz", "/livez", "/readyz", "/health", "/ready"];

/// The gateway's label for requests no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// (method, route, status) → count.
pub type Counts = BTreeMap<(String, String, u16), u64>;

/// `http_requests_total` series of `service` in a Prometheus text exposition.
pub fn parse_requests_total(text: &str, service: &str) -> Counts {
    let mut counts = Counts::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("http_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = split_labels(rest) else {
            continue;
        };
        let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|number| number.parse::<f64>().ok())
        else {
            continue;
        };
        let labels = parse_labels(labels);
        let label = |name: &str| labels.iter().find(|(key, _)| key == name).map(|(_, v)| v.clone());
        if label("service").as_deref() != Some(service) {
            continue;
        }
        let (Some(method), Some(route), Some(status)) = (
            label("method"),
            label("route"),
            label("status").and_then(|status| status.parse::<u16>().ok()),
        ) else {
            continue;
        };
        *counts.entry((method, route, status)).or_default() += value.round() as u64;
    }
    counts
}

/// Split `a="x",b="y"} 12` at the closing brace that is not inside a quoted value.
fn split_labels(rest: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    let mut escaped = false;
    for (index, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some((&rest[..index], &rest[index + 1..])),
            _ => {}
        }
    }
    None
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text.trim();
    while let Some((name, after)) = rest.split_once('=') {
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = Some(index);
                    break;
                }
                other => value.push(other),
            }
        }
        let Some(end) = end else {
            break;
        };
        labels.push((name.trim().trim_start_matches(',').trim().to_owned(), value));
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    labels
}

/// `after - before`, dropping series that did not move.
pub fn delta(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .filter_map(|(key, &value)| {
            let moved = value.saturating_sub(before.get(key).copied().unwrap_or(0));
            (moved > 0).then(|| (key.clone(), moved))
        })
        .collect()
}

/// The route a request name stands for: the part before any `?`.
pub fn route_of(name: &str) -> &str {
    name.split('?').next().unwrap_or(name)
}

pub fn is_compared(route: &str) -> bool {
    !EXCLUDED_ROUTES.contains(&route) && route != UNMATCHED_ROUTE
}

fn is_error(status: u16) -> bool {
    !(200..=299).contains(&status)
}

/// One route's line in the comparison.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteRow {
    pub method: String,
    pub route: String,
    /// Answers this run received (and, for admin routes, the fault steps' own requests).
    pub sent: u64,
    pub sent_errors: u64,
    /// The gateway's count over the run.
    pub gateway: u64,
    pub gateway_errors: u64,
    /// False for the probe/scrape routes and `unmatched`, shown for information only.
    pub compared: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TruthReport {
    pub service: String,
    pub tolerance: f64,
    pub sent_requests: u64,
    pub gateway_requests: u64,
    pub request_gap: f64,
    pub sent_errors: u64,
    pub gateway_errors: u64,
    pub error_gap: f64,
    /// Requests that got no answer (connection refused, timeout): not compared.
    pub no_response: u64,
    pub routes: Vec<RouteRow>,
    /// Compared traffic by status: (status, sent, gateway).
    pub statuses: Vec<(u16, u64, u64)>,
    pub excluded_routes: Vec<String>,
    pub passed: bool,
}

/// Relative gap between two counts: |a - b| / max(a, b), 0 when both are 0.
pub fn gap(a: u64, b: u64) -> f64 {
    let larger = a.max(b);
    if larger == 0 {
        0.0
    } else {
        a.abs_diff(b) as f64 / larger as f64
    }
}

fn route_row<'a>(
    rows: &'a mut BTreeMap<(String, String), RouteRow>,
    method: &str,
    route: &str,
) -> &'a mut RouteRow {
    rows.entry((route.to_owned(), method.to_owned()))
        .or_insert_with(|| RouteRow {
            method: method.to_owned(),
            route: route.to_owned(),
            sent: 0,
            sent_errors: 0,
            gateway: 0,
            gateway_errors: 0,
            compared: is_compared(route),
        })
}

/// Compare `sent` ((method, route, status) → count, status 0 meaning no answer) with the
/// gateway's `delta`.
pub fn compare(service: &str, sent: &Counts, delta: &Counts, tolerance: f64) -> TruthReport {
    let mut rows: BTreeMap<(String, String), RouteRow> = BTreeMap::new();
    let mut statuses: BTreeMap<u16, (u64, u64)> = BTreeMap::new();
    let mut no_response = 0;
    for ((method, route, status), &count) in sent {
        if *status == 0 {
            no_response += count;
            continue;
        }
        let entry = route_row(&mut rows, method, route);
        entry.sent += count;
        if is_error(*status) {
            entry.sent_errors += count;
        }
        if entry.compared {
            statuses.entry(*status).or_default().0 += count;
        }
    }
    for ((method, route, status), &count) in delta {
        let entry = route_row(&mut rows, method, route);
        entry.gateway += count;
        if is_error(*status) {
            entry.gateway_errors += count;
        }
        if entry.compared {
            statuses.entry(*status).or_default().1 += count;
        }
    }
    let routes: Vec<RouteRow> = rows.into_values().collect();
    let compared = routes.iter().filter(|row| row.compared);
    let (sent_requests, sent_errors, gateway_requests, gateway_errors) =
        compared.fold((0, 0, 0, 0), |(a, b, c, d), row| {
            (
                a + row.sent,
                b + row.sent_errors,
                c + row.gateway,
                d + row.gateway_errors,
            )
        });
    let request_gap = gap(sent_requests, gateway_requests);
    let error_gap = gap(sent_errors, gateway_errors);
    TruthReport {
        service: service.to_owned(),
        tolerance,
        sent_requests,
        gateway_requests,
        request_gap,
        sent_errors,
        gateway_errors,
        error_gap,
        no_response,
        routes,
        statuses: statuses
            .into_iter()
            .map(|(status, (sent, gateway))| (status, sent, gateway))
            .collect(),
        excluded_routes: EXCLUDED_ROUTES
            .iter()
            .map(|route| (*route).to_owned())
            .chain([UNMATCHED_ROUTE.to_owned()])
            .collect(),
        passed: sent_requests > 0 && request_gap <= tolerance && error_gap <= tolerance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP http_requests_total HTTP requests served, by method, route template and status.
# TYPE http_requests_total counter
http_requests_total{method="GET",route="/catalog",service="gateway",status="200"} 10
http_requests_total{method="GET",route="/catalog/{id}",service="gateway",status="200"} 7
http_requests_total{method="POST",route="/cart/add",service="gateway",status="500"} 2
http_requests_total{method="GET",route="/metrics",service="gateway",status="200"} 3
http_requests_total{method="GET",route="/odd \"quoted\" }",service="gateway",status="200"} 1
http_requests_total{method="GET",route="/catalog",service="catalog",status="200"} 99
http_request_duration_seconds_bucket{method="GET",route="/catalog",service="gateway",le="0.1"} 10
"#;

    fn key(method: &str, route: &str, status: u16) -> (String, String, u16) {
        (method.to_owned(), route.to_owned(), status)
    }

    #[test]
    fn parses_only_the_services_request_counter() {
        let counts = parse_requests_total(SCRAPE, "gateway");
        assert_eq!(counts.len(), 5);
        assert_eq!(counts[&key("GET", "/catalog", 200)], 10);
        assert_eq!(counts[&key("POST", "/cart/add", 500)], 2);
        assert_eq!(counts[&key("GET", "/odd \"quoted\" }", 200)], 1);
        assert_eq!(parse_requests_total(SCRAPE, "catalog").len(), 1);
    }

    #[test]
    fn delta_keeps_what_moved() {
        let before = parse_requests_total(SCRAPE, "gateway");
        let mut after = before.clone();
        *after.entry(key("GET", "/catalog", 200)).or_default() += 5;
        after.insert(key("GET", "/catalog", 404), 1);
        let moved = delta(&before, &after);
        assert_eq!(moved.len(), 2);
        assert_eq!(moved[&key("GET", "/catalog", 200)], 5);
    }

    #[test]
    fn exact_accounting_passes_and_a_gap_fails() {
        let mut sent = Counts::new();
        sent.insert(key("GET", "/catalog", 200), 100);
        sent.insert(key("POST", "/cart/add", 500), 2);
        sent.insert(key("GET", "/metrics", 200), 4);
        sent.insert(key("GET", "/catalog", 0), 3);
        let mut gateway = sent.clone();
        gateway.remove(&key("GET", "/catalog", 0));
        gateway.insert(key("GET", "/metrics", 200), 9);
        gateway.insert(key("GET", "unmatched", 404), 2);
        let report = compare("gateway", &sent, &gateway, 0.01);
        assert!(report.passed, "{report:?}");
        assert_eq!((report.sent_requests, report.gateway_requests), (102, 102));
        assert_eq!((report.sent_errors, report.gateway_errors), (2, 2));
        assert_eq!(report.no_response, 3);

        gateway.insert(key("POST", "/cart/add", 500), 3);
        let report = compare("gateway", &sent, &gateway, 0.01);
        assert!(!report.passed);
        assert!(report.error_gap > 0.3);

        let mut short = sent.clone();
        short.insert(key("GET", "/catalog", 200), 90);
        let report = compare("gateway", &short, &gateway, 0.01);
        assert!(report.request_gap > 0.01);
        assert!(!report.passed);
    }

    #[test]
    fn routes_come_from_names() {
        assert_eq!(route_of("/catalog?q={q}"), "/catalog");
        assert_eq!(route_of("/catalog/{id}"), "/catalog/{id}");
        assert!(!is_compared("/healthz"));
        assert!(is_compared("/v1/cart/{user_id}"));
    }
}
