//! The gateway's settings: where the backends are, and the edge policies in front of them
//! (timeouts, retries, breakers, outlier ejection, shedding, rate limits, auth).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::builder::BoolishValueParser;
use reqwest::Url;
use shopstack_base::config::{CommonConfig, UrlList, parse_duration};

use crate::routes::Backend;

/// The gateway: ShopStack's front door on :8000.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", version, about)]
pub struct GatewayConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Catalog base URL(s); a comma-separated list means replicas.
    #[arg(long, env = "CATALOG_SERVICE_URL", default_value = "http://127.0.0.1:8001")]
    pub catalog_service_url: UrlList,

    /// Cart base URL(s); a comma-separated list means replicas.
    #[arg(long, env = "CART_SERVICE_URL", default_value = "http://127.0.0.1:8002")]
    pub cart_service_url: UrlList,

    /// Orders base URL(s); a comma-separated list means replicas.
    #[arg(long, env = "ORDERS_SERVICE_URL", default_value = "http://127.0.0.1:8003")]
    pub orders_service_url: UrlList,

    /// How long one attempt at a backend may take: `5s`, or per backend `5s,cart=2s,catalog=800ms`
    /// (a bare duration is the default for the others).
    #[arg(long, env = "UPSTREAM_TIMEOUT", default_value = "5s")]
    pub upstream_timeout: TimeoutTable,

    /// Overall deadline of one client request, retries and backoff included (504 beyond).
    #[arg(long, env = "REQUEST_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub request_deadline: Duration,

    /// Attempts per request (1-3) for requests that are safe to retry: idempotent methods, or a
    /// POST/PATCH carrying `Idempotency-Key` on a route whose backend honours it. 1 turns retries off.
    #[arg(long, env = "RETRY_MAX_ATTEMPTS", default_value_t = 3)]
    pub retry_max_attempts: u32,

    /// First backoff step; each retry doubles it (with jitter) up to RETRY_BACKOFF_MAX.
    #[arg(long, env = "RETRY_BACKOFF_BASE", default_value = "25ms", value_parser = parse_duration)]
    pub retry_backoff_base: Duration,

    /// Longest backoff between two attempts.
    #[arg(long, env = "RETRY_BACKOFF_MAX", default_value = "250ms", value_parser = parse_duration)]
    pub retry_backoff_max: Duration,

    /// Retry budget per backend: retries may be at most this share of requests (0-1; SRE book's 10 %).
    #[arg(long, env = "RETRY_BUDGET_RATIO", default_value_t = 0.1)]
    pub retry_budget_ratio: f64,

    /// Circuit breaker: consecutive failed attempts at a backend that open it (0 = breaker off).
    #[arg(long, env = "BREAKER_FAILURE_THRESHOLD", default_value_t = 5)]
    pub breaker_failure_threshold: u32,

    /// Circuit breaker: share of failed attempts in the last 10 s that opens it (0-1) ...
    #[arg(long, env = "BREAKER_FAILURE_RATIO", default_value_t = 0.5)]
    pub breaker_failure_ratio: f64,

    /// ... once that window holds at least this many attempts.
    #[arg(long, env = "BREAKER_MIN_REQUESTS", default_value_t = 20)]
    pub breaker_min_requests: u32,

    /// How long an open breaker fails fast before letting one probe request through.
    #[arg(long, env = "BREAKER_OPEN_DURATION", default_value = "5s", value_parser = parse_duration)]
    pub breaker_open_duration: Duration,

    /// Outlier detection: consecutive failures that eject one replica from the balancer (0 = off).
    #[arg(long, env = "OUTLIER_CONSECUTIVE_FAILURES", default_value_t = 5)]
    pub outlier_consecutive_failures: u32,

    /// An ejected replica stays out this long times its ejection count (capped at 10×), ...
    #[arg(long, env = "OUTLIER_BASE_EJECTION", default_value = "5s", value_parser = parse_duration)]
    pub outlier_base_ejection: Duration,

    /// ... then is probed (`GET /livez`) at this interval until it answers, and comes back.
    #[arg(long, env = "OUTLIER_PROBE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub outlier_probe_interval: Duration,

    /// How long a keep-alive connection to a backend may sit idle and still be reused; older ones
    /// are closed. Keep it below the backends' own idle timeout (75 s for ShopStack's services),
    /// so the gateway closes first and never sends on a connection the backend is closing.
    #[arg(long, env = "UPSTREAM_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upstream_idle_timeout: Duration,

    /// Load shedding: requests in flight to one backend beyond which the gateway answers a fast 503.
    #[arg(long, env = "UPSTREAM_MAX_CONCURRENCY", default_value_t = 512)]
    pub upstream_max_concurrency: usize,

    /// Requests per second per client (JWT subject, else IP); 0 = no rate limit.
    #[arg(long, env = "RATE_LIMIT_RPS", default_value_t = 0.0)]
    pub rate_limit_rps: f64,

    /// Burst a client may spend at once; 0 = one second's worth of RATE_LIMIT_RPS.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,

    /// Take the client IP from the last `X-Forwarded-For` entry (only behind a proxy that sets it).
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value = "false", value_parser = BoolishValueParser::new())]
    pub trust_forwarded_for: bool,

    /// HS256 secret (at least 32 bytes). Setting it, or a public key, turns edge auth on.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// RS256/ES256 public key, PEM text.
    #[arg(long, env = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,

    /// RS256/ES256 public key, PEM file.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Accepted signature algorithms [default: HS256, RS256 or ES256, after the key]. `none` never is.
    #[arg(long, env = "JWT_ALGORITHMS", value_delimiter = ',')]
    pub jwt_algorithms: Vec<String>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,

    /// The storefront's switches (`crate::storefront`).
    #[command(flatten)]
    pub storefront: crate::storefront::StorefrontConfig,
}

/// Tools that run instead of the server.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a signed token for local use (HS256 with JWT_SECRET, or RS256/ES256 with --private-key-file).
    MintToken(MintTokenArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct MintTokenArgs {
    /// The user the token speaks for (`sub`), e.g. user-123.
    #[arg(long)]
    pub sub: String,

    /// Lifetime, e.g. 1h or 15m.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,

    /// PEM private key (RSA or EC P-256) to sign with instead of JWT_SECRET.
    #[arg(long)]
    pub private_key_file: Option<PathBuf>,
}

impl GatewayConfig {
    /// Each backend and its replicas. A new backend is one more line here.
    pub fn upstream_urls(&self) -> Vec<(Backend, Vec<Url>)> {
        vec![
            (Backend::Catalog, self.catalog_service_url.0.clone()),
            (Backend::Cart, self.cart_service_url.0.clone()),
            (Backend::Orders, self.orders_service_url.0.clone()),
        ]
    }

    /// Edge auth is on when a secret or a public key is configured.
    pub fn auth_enabled(&self) -> bool {
        self.jwt_secret
            .as_deref()
            .is_some_and(|secret| !secret.is_empty())
            || self
                .jwt_public_key
                .as_deref()
                .is_some_and(|key| !key.trim().is_empty())
            || self.jwt_public_key_file.is_some()
    }

    /// The shared settings this gateway runs with: with edge auth on, its own `/stress` needs
    /// the admin token too.
    pub fn common_config(&self) -> CommonConfig {
        let mut common = self.common.clone();
        common.stress_require_admin |= self.auth_enabled();
        common
    }

    /// Reject values no edge could work with, naming the variable.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=3).contains(&self.retry_max_attempts) {
            bail!("RETRY_MAX_ATTEMPTS must be 1, 2 or 3");
        }
        if !(0.0..=1.0).contains(&self.retry_budget_ratio) {
            bail!("RETRY_BUDGET_RATIO must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.breaker_failure_ratio) || self.breaker_failure_ratio == 0.0 {
            bail!("BREAKER_FAILURE_RATIO must be above 0 and at most 1");
        }
        if self.breaker_open_duration.is_zero() {
            bail!("BREAKER_OPEN_DURATION must be above zero");
        }
        if self.request_deadline.is_zero() {
            bail!("REQUEST_DEADLINE must be above zero");
        }
        if self.outlier_probe_interval.is_zero() {
            bail!("OUTLIER_PROBE_INTERVAL must be above zero");
        }
        if self.upstream_idle_timeout.is_zero() {
            bail!("UPSTREAM_IDLE_TIMEOUT must be above zero");
        }
        if self.upstream_max_concurrency == 0 {
            bail!("UPSTREAM_MAX_CONCURRENCY must be at least 1");
        }
        if !self.rate_limit_rps.is_finite() || self.rate_limit_rps < 0.0 {
            bail!("RATE_LIMIT_RPS must be 0 (off) or a positive number");
        }
        self.upstream_timeout.validate()?;
        self.storefront
            .validate(&self.common, self.jwt_secret.as_deref())?;
        for (backend, urls) in self.upstream_urls() {
            if let Some(url) = urls.iter().find(|url| url.scheme() != "http") {
                // The gateway's client is built without TLS: backends sit on the internal network.
                bail!(
                    "{} backend URL {url} must be http:// (the gateway speaks plain HTTP to its backends)",
                    backend.name()
                );
            }
        }
        Ok(())
    }
}

/// `UPSTREAM_TIMEOUT`: a default attempt timeout and per-backend overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutTable {
    pub default: Duration,
    pub overrides: Vec<(String, Duration)>,
}

impl TimeoutTable {
    pub fn for_backend(&self, backend: Backend) -> Duration {
        self.overrides
            .iter()
            .find(|(name, _)| name == backend.name())
            .map_or(self.default, |(_, timeout)| *timeout)
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (name, timeout) in self
            .overrides
            .iter()
            .map(|(n, t)| (n.as_str(), *t))
            .chain([("default", self.default)])
        {
            if timeout.is_zero() {
                bail!("UPSTREAM_TIMEOUT for {name} must be above zero");
            }
        }
        for (name, _) in &self.overrides {
            if !Backend::ALL.iter().any(|backend| backend.name() == name) {
                let known: Vec<&str> = Backend::ALL.iter().map(|backend| backend.name()).collect();
                bail!(
                    "UPSTREAM_TIMEOUT names {name:?}, not a backend ({})",
                    known.join(", ")
                );
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for TimeoutTable {
    type Err = anyhow::Error;

    fn from_str(value: &str) -> anyhow::Result<Self> {
        let mut table = TimeoutTable {
            default: Duration::from_secs(5),
            overrides: Vec::new(),
        };
        for item in value.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            match item.split_once('=') {
                Some((name, duration)) => {
                    let duration = parse_duration(duration)
                        .with_context(|| format!("UPSTREAM_TIMEOUT item {item:?}"))?;
                    table.overrides.push((name.trim().to_owned(), duration));
                }
                None => table.default = parse_duration(item).context("UPSTREAM_TIMEOUT")?,
            }
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn edge_auth_puts_stress_behind_the_admin_token() {
        let open = GatewayConfig::try_parse_from(["gateway"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(!open.auth_enabled());
        assert!(!open.common_config().stress_require_admin);
        let guarded =
            GatewayConfig::try_parse_from(["gateway", "--jwt-secret", "0123456789abcdef0123456789abcdef"])
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(guarded.auth_enabled());
        assert!(guarded.common_config().stress_require_admin);
    }

    #[test]
    fn timeout_table_forms() {
        let plain: TimeoutTable = "2s".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(plain.for_backend(Backend::Cart), Duration::from_secs(2));
        let mixed: TimeoutTable = "3s, cart=800ms".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(mixed.for_backend(Backend::Cart), Duration::from_millis(800));
        assert_eq!(mixed.for_backend(Backend::Catalog), Duration::from_secs(3));
        let unknown: TimeoutTable = "basket=1s".parse().unwrap_or_else(|_| unreachable!());
        assert!(unknown.validate().is_err());
        assert!("cart=soon".parse::<TimeoutTable>().is_err());
    }

    #[test]
    fn the_pool_idle_timeout_defaults_below_backend_keep_alive_and_is_set_by_env() {
        let default = GatewayConfig::try_parse_from(["gateway"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(default.upstream_idle_timeout, crate::pool::IDLE_TIMEOUT);
        assert!(default.upstream_idle_timeout < Duration::from_secs(60));
        let set = GatewayConfig::try_parse_from(["gateway", "--upstream-idle-timeout", "10s"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.upstream_idle_timeout, Duration::from_secs(10));
        let zero = GatewayConfig::try_parse_from(["gateway", "--upstream-idle-timeout", "0s"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(zero.validate().is_err());
    }

    #[test]
    fn backends_are_plain_http() {
        let tls = GatewayConfig::try_parse_from(["gateway", "--cart-service-url", "https://cart:8002"])
            .unwrap_or_else(|e| panic!("{e}"));
        let error = tls.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("cart backend URL https://cart:8002/ must be http://"),
            "{error}"
        );
        let plain = GatewayConfig::try_parse_from(["gateway", "--cart-service-url", "http://cart:8002"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(plain.validate().is_ok());
    }
}
