//! Edge auth: bearer JWTs verified at the gateway.
//!
//! Off unless `JWT_SECRET` (HS256) or `JWT_PUBLIC_KEY`/`JWT_PUBLIC_KEY_FILE` (RS256 or ES256,
//! PEM) is set; one of them set but empty is a configuration error, never "auth off", so a
//! secret lost in templating cannot open the edge. Tokens must be signed with an allowed
//! algorithm (the key's own by default; `none` is never accepted, nor an HMAC token against a
//! public key), carry `exp` and `sub`, match `JWT_ISSUER`/`JWT_AUDIENCE` when those are set, and
//! mark no header parameter critical (`crit`): this gateway implements no JWS extension, so
//! RFC 7515 §4.1.11 has it refuse any token that needs one. The route table says which routes
//! need a token and whose resource each one touches.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{GatewayConfig, MintTokenArgs};

/// Shortest accepted HS256 secret (RFC 7518 §3.2: a key at least as long as the hash).
pub const MIN_SECRET_BYTES: usize = 32;

pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

/// What the gateway reads from a verified token (the validation checks `exp`, `nbf`, `iss`,
/// `aud` and that `sub` is present before this is looked at).
#[derive(Debug, Deserialize)]
struct Verified {
    #[serde(default)]
    sub: String,
}

/// The claims `mint-token` writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Why a presented token was refused.
#[derive(Debug, Clone)]
pub struct AuthFailure {
    /// The `reason` label of `gateway_auth_failures_total`.
    pub reason: &'static str,
    /// For the client (`error_description` and the problem's `detail`).
    pub description: &'static str,
}

/// What the `Authorization` header says about the caller.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    User(String),
    Refused(AuthFailure),
}

/// A key variable that is present but blank: an error rather than "auth off", since an empty
/// value is far more often a secret that failed to render than a wish to run without auth.
fn set_but_empty(variable: &str) -> anyhow::Error {
    anyhow::anyhow!("{variable} is set but empty; unset it to run without edge auth, or give it a value")
}

fn public_key_pem(config: &GatewayConfig) -> anyhow::Result<Option<String>> {
    if let Some(pem) = config.jwt_public_key.as_deref() {
        if pem.trim().is_empty() {
            return Err(set_but_empty("JWT_PUBLIC_KEY"));
        }
        if config.jwt_public_key_file.is_some() {
            bail!("set JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE, not both");
        }
        return Ok(Some(pem.to_owned()));
    }
    let Some(path) = &config.jwt_public_key_file else {
        return Ok(None);
    };
    if path.as_os_str().is_empty() {
        return Err(set_but_empty("JWT_PUBLIC_KEY_FILE"));
    }
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("JWT_PUBLIC_KEY_FILE: cannot read {}", path.display()))?;
    if pem.trim().is_empty() {
        bail!("JWT_PUBLIC_KEY_FILE: {} is empty", path.display());
    }
    Ok(Some(pem))
}

impl Auth {
    /// `None` when no key is configured (auth off).
    pub fn from_config(config: &GatewayConfig) -> anyhow::Result<Option<Arc<Self>>> {
        let secret = config.jwt_secret.as_deref();
        if secret.is_some_and(|secret| secret.trim().is_empty()) {
            return Err(set_but_empty("JWT_SECRET"));
        }
        let public_key = public_key_pem(config)?;
        let (key, family) = match (secret, public_key) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => bail!("set JWT_SECRET or a JWT public key, not both"),
            (Some(secret), None) => {
                if secret.len() < MIN_SECRET_BYTES {
                    bail!("JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes");
                }
                (DecodingKey::from_secret(secret.as_bytes()), AlgorithmFamily::Hmac)
            }
            (None, Some(pem)) => {
                if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    (key, AlgorithmFamily::Ec)
                } else {
                    let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                        .context("JWT public key: not an RSA or EC public key in PEM form")?;
                    (key, AlgorithmFamily::Rsa)
                }
            }
        };
        let algorithms = allowed_algorithms(&config.jwt_algorithms, family)?;
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        let mut required = vec!["exp", "sub"];
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = config.jwt_leeway.as_secs();
        if let Some(issuer) = config.jwt_issuer.as_deref().filter(|v| !v.is_empty()) {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match config.jwt_audience.as_deref().filter(|v| !v.is_empty()) {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Arc::new(Self { key, validation })))
    }

    /// Read and verify the bearer token, if any.
    pub fn identify(&self, headers: &HeaderMap) -> Caller {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Caller::Anonymous;
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
            })
            .filter(|token| !token.is_empty());
        let Some(token) = token else {
            return Caller::Refused(AuthFailure {
                reason: "malformed",
                description: "The Authorization header must be `Bearer <token>`.",
            });
        };
        if let Some(header) = token_header(token) {
            if let Some(algorithm) = header.get("alg").and_then(serde_json::Value::as_str)
                && !self
                    .validation
                    .algorithms
                    .iter()
                    .any(|allowed| Algorithm::from_str(algorithm).is_ok_and(|named| named == *allowed))
            {
                // `none`, an HMAC token against a public key, or anything else off the list.
                return Caller::Refused(AuthFailure {
                    reason: "algorithm",
                    description: "The token is signed with an algorithm this gateway does not accept.",
                });
            }
            // Checked before the signature (no work spent on a token that can't pass), and
            // again on the header the library decodes, below.
            if header.contains_key("crit") {
                return Caller::Refused(CRITICAL_EXTENSION);
            }
        }
        match jsonwebtoken::decode::<Verified>(token, &self.key, &self.validation) {
            // jsonwebtoken parses `crit` but acts on none of it: the check is ours.
            Ok(data) if data.header.crit.is_some() => Caller::Refused(CRITICAL_EXTENSION),
            Ok(data) if !data.claims.sub.is_empty() => Caller::User(data.claims.sub),
            Ok(_) => Caller::Refused(AuthFailure {
                reason: "missing_claim",
                description: "The token's subject is empty.",
            }),
            Err(error) => Caller::Refused(classify(error.kind())),
        }
    }
}

/// A token whose header lists parameters in `crit`. Any list (an empty one too, which RFC 7515
/// forbids producers to send) names an extension this gateway does not implement.
const CRITICAL_EXTENSION: AuthFailure = AuthFailure {
    reason: "malformed",
    description: "The token's header marks an extension critical (crit) that this gateway does not understand.",
};

/// A token's header as JSON members, if it is readable at all (to name a refusal before the
/// signature is checked; the library decodes it again).
fn token_header(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn classify(kind: &ErrorKind) -> AuthFailure {
    let (reason, description) = match kind {
        ErrorKind::ExpiredSignature => ("expired", "The token has expired."),
        ErrorKind::ImmatureSignature => ("not_yet_valid", "The token is not valid yet."),
        ErrorKind::InvalidAudience => ("wrong_audience", "The token is for another audience."),
        ErrorKind::InvalidIssuer => ("wrong_issuer", "The token is from another issuer."),
        ErrorKind::MissingRequiredClaim(_) => (
            "missing_claim",
            "The token lacks a required claim (exp, sub, and iss/aud when configured).",
        ),
        ErrorKind::InvalidSignature => ("invalid_signature", "The token's signature does not verify."),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => (
            "algorithm",
            "The token is signed with an algorithm this gateway does not accept.",
        ),
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => ("invalid_signature", "The token's signature does not verify."),
        _ => ("malformed", "The token is not a well-formed JWT."),
    };
    AuthFailure { reason, description }
}

/// The configured algorithms, or the key family's usual one; each must suit the key.
fn allowed_algorithms(configured: &[String], family: AlgorithmFamily) -> anyhow::Result<Vec<Algorithm>> {
    let names: Vec<&str> = configured
        .iter()
        .map(|name| name.trim())
        .filter(|name| !name.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(vec![match family {
            AlgorithmFamily::Hmac => Algorithm::HS256,
            AlgorithmFamily::Rsa => Algorithm::RS256,
            AlgorithmFamily::Ec => Algorithm::ES256,
            AlgorithmFamily::Ed => Algorithm::EdDSA,
        }]);
    }
    names
        .into_iter()
        .map(|name| {
            if name.eq_ignore_ascii_case("none") {
                bail!("JWT_ALGORITHMS: `none` is never accepted");
            }
            let algorithm = Algorithm::from_str(name)
                .or_else(|_| Algorithm::from_str(&name.to_ascii_uppercase()))
                .map_err(|_| anyhow::anyhow!("JWT_ALGORITHMS: unknown algorithm {name:?}"))?;
            if algorithm.family() != family {
                bail!("JWT_ALGORITHMS: {name} does not suit the configured key");
            }
            Ok(algorithm)
        })
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A signed token for `sub`, valid for `ttl`, with the configured issuer and audience:
/// HS256 with `JWT_SECRET`, or RS256/ES256 with a PEM private key.
pub fn mint(
    config: &GatewayConfig,
    sub: &str,
    ttl: Duration,
    private_key_pem: Option<&str>,
) -> anyhow::Result<String> {
    if sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let (key, algorithm) = match private_key_pem {
        Some(pem) => match EncodingKey::from_ec_pem(pem.as_bytes()) {
            Ok(key) => (key, Algorithm::ES256),
            Err(_) => (
                EncodingKey::from_rsa_pem(pem.as_bytes())
                    .context("--private-key-file: not an RSA or EC P-256 private key in PEM form")?,
                Algorithm::RS256,
            ),
        },
        None => {
            let secret = config
                .jwt_secret
                .as_deref()
                .filter(|secret| !secret.is_empty())
                .context("set JWT_SECRET (HS256) or pass --private-key-file")?;
            if secret.len() < MIN_SECRET_BYTES {
                bail!("JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes");
            }
            (EncodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
        }
    };
    let now = now_secs();
    let claims = Claims {
        sub: sub.to_owned(),
        exp: now + ttl.as_secs().max(1),
        iat: Some(now),
        iss: config.jwt_issuer.clone().filter(|v| !v.is_empty()),
        aud: config.jwt_audience.clone().filter(|v| !v.is_empty()),
    };
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).context("signing the token")
}

/// `gateway mint-token`: print a token on stdout.
pub fn mint_command(config: &GatewayConfig, args: &MintTokenArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let pem = args
        .private_key_file
        .as_ref()
        .map(|path| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display())))
        .transpose()?;
    let token = mint(config, &args.sub, args.ttl, pem.as_deref())?;
    writeln!(std::io::stdout(), "{token}").context("writing the token")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AUTH_FAILURE_REASONS;

    #[test]
    fn every_refusal_reason_is_a_known_label() {
        let kinds = [
            ErrorKind::ExpiredSignature,
            ErrorKind::ImmatureSignature,
            ErrorKind::InvalidAudience,
            ErrorKind::InvalidIssuer,
            ErrorKind::MissingRequiredClaim("exp".into()),
            ErrorKind::InvalidSignature,
            ErrorKind::InvalidAlgorithm,
            ErrorKind::InvalidEcdsaKey,
            ErrorKind::InvalidToken,
        ];
        for kind in &kinds {
            let reason = classify(kind).reason;
            assert!(AUTH_FAILURE_REASONS.contains(&reason), "{reason}");
        }
        let proxy = include_str!("proxy.rs");
        for reason in ["missing_token", "not_owner", "admin_token"] {
            assert!(proxy.contains(&format!("\"{reason}\"")), "{reason}");
            assert!(AUTH_FAILURE_REASONS.contains(&reason), "{reason}");
        }
    }

    fn config(args: &[&str]) -> GatewayConfig {
        use clap::Parser as _;
        let args = std::iter::once("gateway").chain(args.iter().copied());
        GatewayConfig::try_parse_from(args).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn a_key_variable_set_but_empty_is_an_error_not_auth_off() {
        for (args, variable) in [
            (&["--jwt-secret", ""][..], "JWT_SECRET"),
            (&["--jwt-secret", "   "][..], "JWT_SECRET"),
            (&["--jwt-public-key", ""][..], "JWT_PUBLIC_KEY"),
            (&["--jwt-public-key", " \n"][..], "JWT_PUBLIC_KEY"),
        ] {
            let error = Auth::from_config(&config(args))
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default();
            assert!(
                error.contains(&format!("{variable} is set but empty")),
                "{args:?}: {error}"
            );
        }
        assert!(matches!(Auth::from_config(&config(&[])), Ok(None)));
    }

    #[test]
    fn a_critical_header_parameter_is_refused_and_its_absence_is_not() {
        let secret = "0123456789abcdef0123456789abcdef";
        let auth = Auth::from_config(&config(&["--jwt-secret", secret]))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("auth on"));
        let key = EncodingKey::from_secret(secret.as_bytes());
        let claims = Claims {
            sub: "alice".into(),
            exp: now_secs() + 600,
            iat: None,
            iss: None,
            aud: None,
        };
        let identify = |header: &Header| {
            let token = jsonwebtoken::encode(header, &claims, &key).unwrap_or_else(|e| panic!("{e}"));
            let mut headers = HeaderMap::new();
            let value = format!("Bearer {token}")
                .parse()
                .unwrap_or_else(|_| panic!("header"));
            headers.insert(header::AUTHORIZATION, value);
            auth.identify(&headers)
        };
        let mut plain = Header::new(Algorithm::HS256);
        plain.extras.insert("x-note", "not critical, so ignored");
        assert!(matches!(identify(&plain), Caller::User(user) if user == "alice"));
        for crit in [vec!["x-unknown".to_owned()], vec!["b64".to_owned()], vec![]] {
            let mut marked = Header::new(Algorithm::HS256);
            marked.crit = Some(crit.clone());
            marked.extras.insert("x-unknown", true);
            assert!(
                matches!(identify(&marked), Caller::Refused(failure) if failure.reason == "malformed"),
                "{crit:?}"
            );
        }
    }
}
