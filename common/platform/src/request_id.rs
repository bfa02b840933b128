//! The request id every service keeps per request and forwards on its outbound calls.

use axum::http::HeaderName;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The current request's id, so outbound calls made while serving it can forward it.
    pub static REQUEST_ID: String;
}
