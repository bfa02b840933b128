//! Credentials between services (`SERVICE_AUTH_SECRET`): the backends behind the gateway answer
//! their API only to the gateway and to each other.
//!
//! A credential is a compact JWS (HS256 with the shared secret) in the `x-service-credential`
//! header: `iss` the service that sent it, `sub` the user the gateway verified (absent on a
//! service's own calls and on public routes), `iat`/`exp` at most [`LIFETIME`] apart. The
//! user's identity reaches a backend only this way, never as a bare header a client could
//! write. See docs/gateway.md, "Behind the edge".

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use shopstack_base::problem::Problem;
use shopstack_redis::idempotency::Caller;

/// The header a credential travels in.
pub const SERVICE_CREDENTIAL: HeaderName = HeaderName::from_static("x-service-credential");

/// How long a credential is valid: long enough for a request and its retries, short enough
/// that one copied from a log or a packet capture is soon worthless.
pub const LIFETIME_SECS: u64 = 60;

/// Clock difference tolerated between machines.
const LEEWAY_SECS: u64 = 5;

/// A credential without a user is reused until this much of its lifetime is left, so public
/// routes sign once per half-minute rather than once per request.
const REUSE_UNTIL_SECS_LEFT: u64 = LIFETIME_SECS / 2;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    iat: u64,
    exp: u64,
}

/// What a verified credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The service that sent the request.
    pub issuer: String,
    /// The user the gateway verified, if any.
    pub user: Option<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
}

/// Signs this service's credentials and checks the ones it receives.
pub struct ServiceAuth {
    issuer: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// The current credential without a user, and when it expires.
    anonymous: Mutex<Option<(u64, HeaderValue)>>,
}

impl std::fmt::Debug for ServiceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAuth")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl ServiceAuth {
    /// `issuer`: this service's name, written into every credential it signs.
    pub fn new(secret: &str, issuer: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        Self {
            issuer: issuer.to_owned(),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            anonymous: Mutex::new(None),
        }
    }

    /// A credential for a request on behalf of `user` (or of this service itself). `None` only
    /// if signing failed (logged), and then the callee answers 401: never a request that
    /// silently passes without one.
    pub fn credential(&self, user: Option<&str>) -> Option<HeaderValue> {
        let now = now_secs();
        if user.is_none() {
            let mut cached = self
                .anonymous
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((expires, value)) = cached.as_ref()
                && *expires >= now + REUSE_UNTIL_SECS_LEFT
            {
                return Some(value.clone());
            }
            let value = self.sign(None, now)?;
            *cached = Some((now + LIFETIME_SECS, value.clone()));
            return Some(value);
        }
        self.sign(user, now)
    }

    fn sign(&self, user: Option<&str>, now: u64) -> Option<HeaderValue> {
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: user.map(str::to_owned),
            iat: now,
            exp: now + LIFETIME_SECS,
        };
        let signed = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| error.to_string())
            .and_then(|token| HeaderValue::try_from(token).map_err(|error| error.to_string()));
        match signed {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::error!(%error, "cannot sign a service credential");
                None
            }
        }
    }

    /// Check a received credential: signed with the shared secret, not expired, and short-lived
    /// (a token minted with the secret for longer than [`LIFETIME_SECS`] is refused too).
    pub fn verify(&self, value: Option<&HeaderValue>) -> Result<Verified, Refusal> {
        let token = value
            .ok_or(Refusal::Missing)?
            .to_str()
            .map_err(|_| Refusal::Invalid)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| Refusal::Invalid)?
            .claims;
        let now = now_secs();
        if claims.exp.saturating_sub(claims.iat) > LIFETIME_SECS || claims.iat > now + LEEWAY_SECS {
            return Err(Refusal::Invalid);
        }
        Ok(Verified {
            issuer: claims.iss,
            user: claims.sub,
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

/// The middleware on a service's API and operator routes (the probes, `/metrics`,
/// `/openapi.json` and `/docs` are served outside it): 401 without a valid credential; with one,
/// the user it names becomes the request's [`Caller`] (the owner of its idempotency keys).
pub async fn require_credential(
    State(auth): State<Arc<ServiceAuth>>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.verify(request.headers().get(&SERVICE_CREDENTIAL)) {
        Ok(verified) => {
            if let Some(user) = verified.user {
                request.extensions_mut().insert(Caller(user));
            }
            next.run(request).await
        }
        Err(refusal) => refused(refusal).into_response(),
    }
}

fn refused(refusal: Refusal) -> Problem {
    let detail = match refusal {
        Refusal::Missing => {
            "this service answers only the gateway and the other ShopStack services: send the request through the gateway"
        }
        Refusal::Invalid => "the service credential is not valid (wrong secret, expired or malformed)",
    };
    Problem::new(StatusCode::UNAUTHORIZED, "service-credential-required", detail).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("ServiceCredential realm=\"shopstack\""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_credential_names_its_issuer_and_user_and_checks_with_the_same_secret() {
        let gateway = ServiceAuth::new(SECRET, "gateway");
        let catalog = ServiceAuth::new(SECRET, "catalog");
        let credential = gateway.credential(Some("alice")).unwrap();
        assert_eq!(
            catalog.verify(Some(&credential)),
            Ok(Verified {
                issuer: "gateway".into(),
                user: Some("alice".into())
            })
        );
        let own = catalog.credential(None).unwrap();
        assert_eq!(gateway.verify(Some(&own)).map(|verified| verified.user), Ok(None));
    }

    #[test]
    fn another_secret_a_missing_header_and_garbage_are_refused() {
        let other = ServiceAuth::new("another-secret-another-secret-xx", "gateway");
        let catalog = ServiceAuth::new(SECRET, "catalog");
        let forged = other.credential(Some("alice")).unwrap();
        assert_eq!(catalog.verify(Some(&forged)), Err(Refusal::Invalid));
        assert_eq!(catalog.verify(None), Err(Refusal::Missing));
        assert_eq!(
            catalog.verify(Some(&HeaderValue::from_static("not.a.jws"))),
            Err(Refusal::Invalid)
        );
    }

    fn signed(claims: &Claims, algorithm: Algorithm) -> HeaderValue {
        let token = jsonwebtoken::encode(
            &Header::new(algorithm),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        HeaderValue::try_from(token).unwrap()
    }

    #[test]
    fn expired_long_lived_and_future_credentials_are_refused() {
        let catalog = ServiceAuth::new(SECRET, "catalog");
        let now = now_secs();
        let claims = |iat: u64, exp: u64| Claims {
            iss: "gateway".into(),
            sub: Some("alice".into()),
            iat,
            exp,
        };
        let expired = signed(&claims(now - 200, now - 100), Algorithm::HS256);
        let long_lived = signed(&claims(now, now + 86_400), Algorithm::HS256);
        let from_the_future = signed(&claims(now + 30, now + 60), Algorithm::HS256);
        let other_algorithm = signed(&claims(now, now + 30), Algorithm::HS512);
        for credential in [expired, long_lived, from_the_future, other_algorithm] {
            assert_eq!(catalog.verify(Some(&credential)), Err(Refusal::Invalid));
        }
        let fresh = signed(&claims(now, now + 30), Algorithm::HS256);
        assert!(catalog.verify(Some(&fresh)).is_ok());
    }

    #[test]
    fn a_credential_without_a_user_is_reused_and_one_with_a_user_is_not() {
        let cart = ServiceAuth::new(SECRET, "cart");
        assert_eq!(cart.credential(None), cart.credential(None));
        let first = cart.credential(Some("alice")).unwrap();
        let verified = cart.verify(Some(&first)).unwrap();
        assert_eq!(verified.user.as_deref(), Some("alice"));
        assert_ne!(cart.credential(None), Some(first));
    }
}
