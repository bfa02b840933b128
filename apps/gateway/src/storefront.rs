//! The storefront: a shop page for browsers at `/`, built from plain HTML, CSS and JavaScript
//! modules compiled into the binary (`apps/gateway/storefront/`), talking to the public API
//! only. A request for `/` whose `Accept` prefers `text/html` gets the page; every other client
//! keeps getting the gateway's service info (docs/storefront.md).
//!
//! Two routes exist beside the assets, each behind its own switch:
//! - `POST /dev/token` (`DEV_TOKEN_ROUTE=true`, refused with `ENVIRONMENT=production`): a
//!   short-lived token for a shopper id, signed by [`crate::auth::mint`], so a developer can
//!   sign in to the page with edge auth on;
//! - `POST /otlp/v1/traces` (`BROWSER_TRACES_URL` set): the page's spans (OTLP/HTTP JSON) passed
//!   on to the collector, so the page needs no origin but its own.

use std::time::Duration;

use anyhow::bail;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use headers_accept::Accept;
use mediatype::MediaType;
use mediatype::names::{APPLICATION, HTML, JSON, TEXT};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shopstack_base::Problem;
use shopstack_base::config::CommonConfig;
use shopstack_base::extract::Json;

use crate::GatewayState;
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::proxy::{Peer, client_ip};
use crate::ratelimit::ClientKey;

/// The page's only allowed origin is its own: no inline script or style, no other host for
/// anything (scripts, styles, images, fonts, requests), no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self'; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; \
form-action 'self'; frame-ancestors 'none'";

/// Lifetime of a development token: long enough for a demo, short enough to be worthless later.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// Largest span batch the browser-trace forwarder takes (a click's spans are a few KB).
pub const MAX_TRACE_BODY_BYTES: usize = 256 * 1024;

/// How long the collector may take to accept a batch.
const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// The storefront's switches.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StorefrontConfig {
    /// Serve `POST /dev/token`, which mints a 15-minute token for any shopper id with JWT_SECRET
    /// (development only: refused at start when ENVIRONMENT=production).
    #[arg(
        long,
        env = "DEV_TOKEN_ROUTE",
        default_value = "false",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dev_token_route: bool,

    /// OTLP/HTTP traces URL of the collector (e.g. `http://otel-collector:4318/v1/traces`) that
    /// `POST /otlp/v1/traces` forwards the storefront's browser spans to; unset or empty: no such route.
    #[arg(long, env = "BROWSER_TRACES_URL")]
    pub browser_traces_url: Option<String>,
}

impl StorefrontConfig {
    /// The development token route is for development machines only, and signs with the HS256
    /// secret (a public-key gateway holds no private key).
    pub fn validate(&self, common: &CommonConfig, jwt_secret: Option<&str>) -> anyhow::Result<()> {
        if self.dev_token_route {
            if is_production(&common.environment) {
                bail!(
                    "DEV_TOKEN_ROUTE=true is refused with ENVIRONMENT={}: it mints a token for anyone who asks",
                    common.environment
                );
            }
            if jwt_secret.is_none_or(|secret| secret.trim().is_empty()) {
                bail!("DEV_TOKEN_ROUTE=true needs JWT_SECRET: the route signs HS256 tokens with it");
            }
        }
        self.traces_url()?;
        Ok(())
    }

    /// `BROWSER_TRACES_URL`, when set and not empty (an empty value, as the Compose file's lite
    /// profile leaves it, means off).
    pub fn traces_url(&self) -> anyhow::Result<Option<Url>> {
        let Some(text) = self
            .browser_traces_url
            .as_deref()
            .map(str::trim)
            .filter(|text| !text.is_empty())
        else {
            return Ok(None);
        };
        match Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(Some(url)),
            _ => bail!("BROWSER_TRACES_URL {text:?} must be an http:// or https:// URL"),
        }
    }
}

fn is_production(environment: &str) -> bool {
    let environment = environment.trim();
    environment.eq_ignore_ascii_case("production") || environment.eq_ignore_ascii_case("prod")
}

/// One file served from the binary.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: Bytes,
    etag: HeaderValue,
}

impl Asset {
    fn new(name: &'static str, content_type: &'static str, body: Bytes) -> Self {
        let digest = Sha256::digest(&body);
        let hex: String = digest[..12].iter().map(|byte| format!("{byte:02x}")).collect();
        let etag = HeaderValue::from_str(&format!("\"{hex}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        Self {
            name,
            content_type,
            body,
            etag,
        }
    }

    /// The file, or 304 when the client's `If-None-Match` names it. `no-cache`: browsers keep
    /// the file but ask again each time, so a new gateway build is seen at once (the files'
    /// names carry no version) while an unchanged file costs a 304.
    fn respond(&self, request_headers: &HeaderMap, extra: &[(HeaderName, &'static str)]) -> Response {
        let fresh = request_headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == "*" || self.etag.to_str().is_ok_and(|etag| etag == tag));
        let mut response = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut response = Response::new(Body::from(self.body.clone()));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
            response
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        for (name, value) in extra {
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
        response
    }
}

/// The files under `apps/gateway/storefront/`, served at `/storefront/<name>`.
const FILES: &[(&str, &str, &[u8])] = &[
    ("app.js", JAVASCRIPT, include_bytes!("../storefront/app.js")),
    ("api.js", JAVASCRIPT, include_bytes!("../storefront/api.js")),
    (
        "session.js",
        JAVASCRIPT,
        include_bytes!("../storefront/session.js"),
    ),
    ("trace.js", JAVASCRIPT, include_bytes!("../storefront/trace.js")),
    ("views.js", JAVASCRIPT, include_bytes!("../storefront/views.js")),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../storefront/style.css"),
    ),
    ("logo.svg", SVG, include_bytes!("../storefront/logo.svg")),
    (
        "electronics.svg",
        SVG,
        include_bytes!("../storefront/electronics.svg"),
    ),
    ("home.svg", SVG, include_bytes!("../storefront/home.svg")),
    ("apparel.svg", SVG, include_bytes!("../storefront/apparel.svg")),
    ("product.svg", SVG, include_bytes!("../storefront/product.svg")),
];

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// The page's template: `{{settings}}` becomes the `data-*` attributes that tell the script
/// what this gateway offers.
const PAGE: &str = include_str!("../storefront/index.html");

/// Everything the storefront serves, built once at start.
pub struct Storefront {
    page: Asset,
    files: Vec<Asset>,
    /// The settings `POST /dev/token` signs with; `None` while the route is off.
    dev_token: Option<crate::GatewayConfig>,
    traces_url: Option<Url>,
}

impl Storefront {
    pub fn new(gateway: &crate::GatewayConfig, auth: bool) -> Self {
        let config = &gateway.storefront;
        // Validated with the rest of the configuration before the gateway starts.
        let traces_url = config.traces_url().ok().flatten();
        let settings = format!(
            "data-auth=\"{auth}\" data-dev-token=\"{}\" data-traces=\"{}\"",
            config.dev_token_route,
            traces_url.is_some()
        );
        let page = PAGE.replace("{{settings}}", &settings);
        Self {
            page: Asset::new("index.html", "text/html; charset=utf-8", Bytes::from(page)),
            files: FILES
                .iter()
                .map(|(name, content_type, body)| Asset::new(name, content_type, Bytes::from_static(body)))
                .collect(),
            dev_token: config.dev_token_route.then(|| gateway.clone()),
            traces_url,
        }
    }

    /// The names of the files served at `/storefront/<name>`.
    pub fn file_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.files.iter().map(|file| file.name)
    }
}

/// Whether the request's `Accept` prefers HTML to JSON (q-values and specificity honoured; a
/// tie, `*/*`, a missing or unreadable header all mean JSON, what API clients always had).
pub fn prefers_html(headers: &HeaderMap) -> bool {
    const TEXT_HTML: MediaType<'static> = MediaType::new(TEXT, HTML);
    const APPLICATION_JSON: MediaType<'static> = MediaType::new(APPLICATION, JSON);
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    if values.is_empty() {
        return false;
    }
    let Ok(accept) = values.join(",").parse::<Accept>() else {
        return false;
    };
    accept
        .negotiate([&APPLICATION_JSON, &TEXT_HTML])
        .is_some_and(|chosen| *chosen == TEXT_HTML)
}

/// The shop page, with its Content-Security-Policy; `Vary: Accept`, since `/` also answers JSON.
pub fn page(state: &GatewayState, headers: &HeaderMap) -> Response {
    state.storefront.page.respond(
        headers,
        &[
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::VARY, "Accept"),
        ],
    )
}

/// `/storefront/<name>`, and the two switched routes when their switches are on.
pub fn router(state: GatewayState) -> Router {
    let mut router = Router::new().route("/storefront/{file}", get(file));
    if state.storefront.dev_token.is_some() {
        router = router.route("/dev/token", post(dev_token));
    }
    if state.storefront.traces_url.is_some() {
        router = router.route("/otlp/v1/traces", post(browser_traces));
    }
    router.with_state(state)
}

async fn file(State(state): State<GatewayState>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    match state.storefront.files.iter().find(|file| file.name == name) {
        Some(file) => file.respond(&headers, &[]),
        None => Problem::not_found(format!("No storefront file {name}")).into_response(),
    }
}

/// Limit the route's callers as the proxied routes are: per verified user, else per IP.
fn rate_limit(
    state: &GatewayState,
    request_headers: &HeaderMap,
    peer: Option<&Peer>,
) -> Result<(), GatewayError> {
    let Some(limiter) = &state.rate_limiter else {
        return Ok(());
    };
    let user = match state.auth.as_ref().map(|auth| auth.identify(request_headers)) {
        Some(Caller::User(user)) => Some(user),
        _ => None,
    };
    let client = match user {
        Some(user) => ClientKey::User(user),
        None => ClientKey::Ip(client_ip(
            request_headers,
            peer.map(|peer| peer.ip),
            state.edge.trust_forwarded_for,
        )),
    };
    limiter.check(&client).map_err(|retry_after| {
        state
            .metrics
            .rate_limited
            .with_label_values(&[client.kind()])
            .inc();
        GatewayError::RateLimited { retry_after }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// The shopper id the token speaks for.
    sub: String,
}

#[derive(Serialize)]
struct TokenAnswer {
    token: String,
    token_type: &'static str,
    expires_in: u64,
    sub: String,
}

/// `POST /dev/token {"sub"}` → a short-lived bearer token for that shopper.
async fn dev_token(State(state): State<GatewayState>, request: Request) -> Response {
    let peer = request.extensions().get::<Peer>().cloned();
    if let Err(error) = rate_limit(&state, request.headers(), peer.as_ref()) {
        return error.into_response();
    }
    let Json(TokenRequest { sub }) = match Json::<TokenRequest>::from_request(request, &()).await {
        Ok(body) => body,
        Err(problem) => return problem.into_response(),
    };
    if let Err(message) = shopstack_base::ids::check_id("sub", &sub) {
        return Problem::bad_request(message).into_response();
    }
    let Some(config) = &state.storefront.dev_token else {
        return Problem::not_found("No route for POST /dev/token").into_response();
    };
    match crate::auth::mint(config, &sub, DEV_TOKEN_TTL, None) {
        Ok(token) => {
            tracing::info!(sub = %sub, "development token minted");
            Json(TokenAnswer {
                token,
                token_type: "Bearer",
                expires_in: DEV_TOKEN_TTL.as_secs(),
                sub,
            })
            .into_response()
        }
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "development token not minted");
            Problem::internal().into_response()
        }
    }
}

/// `POST /otlp/v1/traces`: an OTLP/HTTP JSON span batch from the page, passed on to
/// `BROWSER_TRACES_URL` as it came once it is known to be one.
async fn browser_traces(State(state): State<GatewayState>, request: Request) -> Response {
    let Some(url) = state.storefront.traces_url.clone() else {
        return Problem::not_found("No route for POST /otlp/v1/traces").into_response();
    };
    let peer = request.extensions().get::<Peer>().cloned();
    if let Err(error) = rate_limit(&state, request.headers(), peer.as_ref()) {
        return error.into_response();
    }
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Send the spans as OTLP/HTTP JSON (Content-Type: application/json).",
        )
        .into_response();
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_TRACE_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return GatewayError::BodyTooLarge {
                limit: MAX_TRACE_BODY_BYTES,
            }
            .into_response();
        }
    };
    let is_batch = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|value| value.get("resourceSpans").map(serde_json::Value::is_array))
        .unwrap_or(false);
    if !is_batch {
        return Problem::bad_request(
            "The body must be an OTLP JSON export request with a resourceSpans array.",
        )
        .into_response();
    }
    // The plain client: the collector is no ShopStack service, so it gets no service credential
    // and no trace headers of the gateway's own.
    let sent = state
        .platform
        .client()
        .inner()
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .timeout(COLLECTOR_TIMEOUT)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(answer) if answer.status().is_success() => {
            let body = answer.bytes().await.unwrap_or_default();
            let body = if body.is_empty() {
                Bytes::from_static(b"{}")
            } else {
                body
            };
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Ok(answer) if answer.status().is_client_error() => Problem::bad_request(format!(
            "The trace collector refused the spans ({}).",
            answer.status()
        ))
        .into_response(),
        Ok(answer) => {
            tracing::warn!(status = answer.status().as_u16(), "trace collector failed");
            GatewayError::BadGateway {
                upstream: "collector",
            }
            .into_response()
        }
        Err(error) if error.is_timeout() => GatewayError::Timeout {
            upstream: "collector",
        }
        .into_response(),
        Err(error) => {
            tracing::warn!(error = %error, "trace collector unreachable");
            GatewayError::Unavailable {
                upstream: "collector",
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway_config() -> crate::GatewayConfig {
        use clap::Parser as _;
        crate::GatewayConfig::try_parse_from(["gateway"]).unwrap_or_else(|error| panic!("{error}"))
    }

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(value).unwrap_or_else(|_| unreachable!()),
        );
        headers
    }

    #[test]
    fn html_only_when_the_accept_header_prefers_it() {
        for browser in [
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
            "text/html",
            "text/*",
            "text/html, application/json",
            "application/json;q=0.5, text/html",
        ] {
            assert!(prefers_html(&accept(browser)), "{browser}");
        }
        for api in [
            "*/*",
            "application/json",
            "application/json, text/html",
            "text/html;q=0.5, application/json",
            "text/html;q=0, */*",
            "application/*, text/html;q=0.9",
            "not a media type",
        ] {
            assert!(!prefers_html(&accept(api)), "{api}");
        }
        assert!(!prefers_html(&HeaderMap::new()));
    }

    #[test]
    fn every_file_the_page_names_is_served() {
        let storefront = Storefront::new(&gateway_config(), false);
        let page = String::from_utf8_lossy(&storefront.page.body).into_owned();
        let names: Vec<&str> = storefront.file_names().collect();
        for referenced in page.split("/storefront/").skip(1) {
            let name: String = referenced
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .collect();
            assert!(names.contains(&name.as_str()), "{name} is not served");
        }
        for (name, _, body) in FILES {
            let text = String::from_utf8_lossy(body);
            for import in text.split("from './").skip(1) {
                let imported: String = import.chars().take_while(|c| *c != '\'').collect();
                assert!(
                    names.contains(&imported.as_str()),
                    "{name} imports {imported}, not served"
                );
            }
        }
        assert!(page.contains("data-auth=\"false\""));
        assert!(!page.contains("{{"), "a placeholder is left in the page");
    }

    #[test]
    fn the_page_and_its_files_load_nothing_from_another_host() {
        let storefront = Storefront::new(&gateway_config(), true);
        for asset in std::iter::once(&storefront.page).chain(&storefront.files) {
            let text = String::from_utf8_lossy(&asset.body);
            for (index, _) in text.match_indices("//") {
                let before = &text[..index];
                // SVG namespaces are names, not fetched; comments in the scripts start with //.
                if before.ends_with("http:") || before.ends_with("https:") {
                    let rest = &text[index..];
                    assert!(
                        rest.starts_with("//www.w3.org/2000/svg")
                            || rest.starts_with("//www.w3.org/1999/xlink"),
                        "{} names another host: {}",
                        asset.name,
                        &rest[..rest.len().min(60)]
                    );
                }
            }
            assert!(
                !text.contains("style=\""),
                "{}: inline style breaks the CSP",
                asset.name
            );
            if asset.name == "index.html" {
                assert!(!text.contains("<script>"), "inline script breaks the CSP");
                let handler = text.split(" on").skip(1).find(|rest| {
                    let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
                    !name.is_empty() && rest[name.len()..].starts_with('=')
                });
                assert!(
                    handler.is_none(),
                    "an inline event handler breaks the CSP: on{handler:?}"
                );
            }
        }
    }

    #[test]
    fn the_dev_token_switch_is_refused_in_production_and_without_a_secret() {
        let secret = "0123456789abcdef0123456789abcdef";
        let on = StorefrontConfig {
            dev_token_route: true,
            browser_traces_url: None,
        };
        let common = |environment: &str| {
            let mut config = gateway_config().common;
            config.environment = environment.to_owned();
            config
        };
        let refused = on
            .validate(&common("production"), Some(secret))
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("DEV_TOKEN_ROUTE=true is refused with ENVIRONMENT=production"),
            "{refused}"
        );
        assert!(on.validate(&common("development"), Some(secret)).is_ok());
        assert!(on.validate(&common("development"), None).is_err());
        assert!(
            StorefrontConfig::default()
                .validate(&common("production"), None)
                .is_ok()
        );
        let traces = |url: &str| StorefrontConfig {
            dev_token_route: false,
            browser_traces_url: Some(url.to_owned()),
        };
        assert!(matches!(traces("").traces_url(), Ok(None)));
        assert!(
            traces("http://collector:4318/v1/traces")
                .traces_url()
                .is_ok_and(|url| url.is_some())
        );
        for bad in ["collector:4318", "ftp://collector/v1/traces", "not a url"] {
            assert!(
                traces(bad).validate(&common("development"), None).is_err(),
                "{bad}"
            );
        }
    }
}
