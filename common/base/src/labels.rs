//! Metric label values every service agrees on.

/// `route` label for requests no route matched (404s): one bounded value, never the raw path.
pub const UNMATCHED_ROUTE: &str = "unmatched";
