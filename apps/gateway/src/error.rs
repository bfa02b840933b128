use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shopstack_base::Problem;

/// `realm` of the gateway's `WWW-Authenticate` challenges.
pub const REALM: &str = "shopstack";

/// What the gateway itself can answer instead of the backend's response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// 503: no connection to the backend (down, refusing).
    #[error("The {upstream} service is unavailable.")]
    Unavailable { upstream: &'static str },
    /// 504: the backend did not answer within the attempt timeout or the request's deadline.
    #[error("The {upstream} service did not answer in time.")]
    Timeout { upstream: &'static str },
    /// 502: the backend answered something unusable (reset mid-response, bad HTTP).
    #[error("The {upstream} service returned an invalid response.")]
    BadGateway { upstream: &'static str },
    /// 503: the backend's circuit breaker is open.
    #[error("The {upstream} service is failing; the gateway is not sending it requests for now.")]
    CircuitOpen {
        upstream: &'static str,
        retry_after: Duration,
    },
    /// 503: the backend has as many requests in flight as the gateway allows (load shedding).
    #[error("The {upstream} service is at capacity; try again shortly.")]
    Overloaded { upstream: &'static str },
    /// 429: this client is over its rate.
    #[error("Too many requests; slow down.")]
    RateLimited { retry_after: Duration },
    /// 401: a bearer token is needed and none valid was presented.
    #[error("{description}")]
    Unauthorized {
        description: &'static str,
        /// RFC 6750 `error="invalid_token"`: a token was presented but refused.
        invalid_token: bool,
    },
    /// 401: an admin route without the admin token (boxed: it is large, and this error lives in
    /// request futures that are moved).
    #[error("{}", .0.detail)]
    AdminOnly(Box<Problem>),
    /// 404: another user's resource; answered as if it did not exist.
    #[error("Not found.")]
    NotYours,
    /// 400: the request body could not be read (the client broke off mid-body).
    #[error("The request body could not be read.")]
    BadRequestBody,
    /// 400: a body the gateway refuses to forward (it says why).
    #[error("{0}")]
    InvalidBody(&'static str),
    /// 413: the request body is above the limit.
    #[error("The request body is larger than {limit} bytes.")]
    BodyTooLarge { limit: usize },
    /// 502: a switch meant for every replica of the backend did not reach them all.
    #[error(
        "Not every {upstream} replica took the change: {}. The others did; send it again.",
        failed.join(", ")
    )]
    NotOnEveryReplica {
        upstream: &'static str,
        failed: Vec<String>,
    },
}

impl GatewayError {
    /// The `status` label of the upstream metrics for answers the backend never gave.
    pub fn outcome(&self) -> &'static str {
        match self {
            GatewayError::Unavailable { .. } => "unavailable",
            GatewayError::Timeout { .. } => "timeout",
            GatewayError::BadGateway { .. } => "bad_gateway",
            GatewayError::CircuitOpen { .. } => "circuit_open",
            GatewayError::Overloaded { .. } => "shed",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::Unauthorized { .. } | GatewayError::AdminOnly(_) => "unauthorized",
            GatewayError::NotYours => "not_found",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::BadRequestBody | GatewayError::InvalidBody(_) => "bad_request",
            GatewayError::NotOnEveryReplica { .. } => "partial",
        }
    }
}

/// Whole seconds to wait, at least 1 (`Retry-After` has no fractions).
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        let problem = match self {
            GatewayError::Unavailable { upstream } => Problem::unavailable(detail, 1)
                .with_title("Upstream unavailable")
                .with("upstream", upstream),
            GatewayError::Timeout { upstream } => {
                Problem::new(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout", detail)
                    .with("upstream", upstream)
            }
            GatewayError::BadGateway { upstream } => {
                Problem::new(StatusCode::BAD_GATEWAY, "bad-gateway", detail).with("upstream", upstream)
            }
            GatewayError::CircuitOpen {
                upstream,
                retry_after,
            } => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "circuit-open", detail)
                .with_title("Circuit open")
                .with("upstream", upstream)
                .retry_after(whole_seconds(retry_after)),
            GatewayError::Overloaded { upstream } => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail)
                    .with_title("Upstream at capacity")
                    .with("upstream", upstream)
                    .retry_after(1)
            }
            GatewayError::RateLimited { retry_after } => {
                Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail)
                    .retry_after(whole_seconds(retry_after))
            }
            GatewayError::Unauthorized {
                description,
                invalid_token,
            } => {
                let challenge = if invalid_token {
                    format!(
                        "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{description}\""
                    )
                } else {
                    format!("Bearer realm=\"{REALM}\"")
                };
                let mut problem = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    problem = problem.with_header(header::WWW_AUTHENTICATE, value);
                }
                problem
            }
            GatewayError::AdminOnly(problem) => *problem,
            GatewayError::NotYours => Problem::not_found(detail),
            GatewayError::BadRequestBody | GatewayError::InvalidBody(_) => Problem::bad_request(detail),
            GatewayError::BodyTooLarge { limit } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", detail).with("limit", limit)
            }
            GatewayError::NotOnEveryReplica { upstream, failed } => {
                Problem::new(StatusCode::BAD_GATEWAY, "not-on-every-replica", detail)
                    .with("upstream", upstream)
                    .with("failed", failed)
            }
        };
        problem.into_response()
    }
}
