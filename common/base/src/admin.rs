//! The admin API guard: `Authorization: Bearer $ADMIN_TOKEN`, compared in constant time.

use axum::http::{HeaderMap, header};

use crate::problem::Problem;

/// Ok when `headers` carry the configured admin token; 401 otherwise (also when none is set).
pub fn authorize(expected: Option<&str>, headers: &HeaderMap) -> Result<(), Problem> {
    let Some(expected) = expected else {
        return Err(Problem::unauthorized(
            "The admin API is disabled: start the service with ADMIN_TOKEN set.",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Problem::unauthorized("The admin token is not valid.")),
        None => Err(Problem::unauthorized(
            "This route needs `Authorization: Bearer <ADMIN_TOKEN>`.",
        )),
    }
}

/// Compare without an early exit, so response timing does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (index, byte) in a.iter().enumerate() {
        difference |= usize::from(byte ^ b.get(index % b.len().max(1)).copied().unwrap_or(0));
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert(header::AUTHORIZATION, value);
        }
        headers
    }

    #[test]
    fn only_the_exact_token_passes() {
        assert!(authorize(Some("s3cret-token"), &bearer("s3cret-token")).is_ok());
        assert!(authorize(Some("s3cret-token"), &bearer("s3cret-tokeN")).is_err());
        assert!(authorize(Some("s3cret-token"), &bearer("s3cret-token-and-more")).is_err());
        assert!(authorize(Some("s3cret-token"), &bearer("")).is_err());
        assert!(authorize(Some("s3cret-token"), &HeaderMap::new()).is_err());
        assert!(authorize(None, &bearer("anything")).is_err());
    }
}
