use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shopstack_common::Problem;

/// What the gateway itself can answer instead of the backend's response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// 503: no connection to the backend (down, refusing).
    #[error("The {upstream} service is unavailable.")]
    Unavailable { upstream: &'static str },
    /// 504: the backend did not answer within the upstream timeout.
    #[error("The {upstream} service did not answer in time.")]
    Timeout { upstream: &'static str },
    /// 502: the backend answered something unusable (reset mid-response, bad HTTP).
    #[error("The {upstream} service returned an invalid response.")]
    BadGateway { upstream: &'static str },
    /// 413: the request body is above the limit.
    #[error("The request body is larger than {limit} bytes.")]
    BodyTooLarge { limit: usize },
}

impl GatewayError {
    /// The `status` label of the upstream metrics for answers the backend never gave.
    pub fn outcome(&self) -> &'static str {
        match self {
            GatewayError::Unavailable { .. } => "unavailable",
            GatewayError::Timeout { .. } => "timeout",
            GatewayError::BadGateway { .. } => "bad_gateway",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
        }
    }
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
            GatewayError::BodyTooLarge { limit } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", detail).with("limit", limit)
            }
        };
        problem.into_response()
    }
}
