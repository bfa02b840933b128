//! Settings every service shares, read from the environment or the same-named `--flags`.
//!
//! Each service's own config struct flattens [`CommonConfig`] into its clap parser and calls
//! [`CommonConfig::resolve`] with its defaults. Everything is validated here, before any port is
//! bound; a bad value ends the process with exit code 2 and a message naming the variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::builder::BoolishValueParser;
use opentelemetry_sdk::trace::Sampler;
use reqwest::Url;

use crate::simulation::{AppliesTo, SimulationProfile};

/// Options shared by every ShopStack binary.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// Listen port [default: the service's own, 8000-8003].
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,

    /// Address to bind. The loopback default keeps a service reachable from this machine only;
    /// the container image sets 0.0.0.0.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1")]
    pub bind_addr: IpAddr,

    /// Longest a client may take to send a request's head (request line and headers); past it
    /// the connection gets 408 and is closed (closed without an answer if nothing came).
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A keep-alive connection with no request for this long is closed. Longer than the 60 s of
    /// common load balancers, so that they close first.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Longest a client may take to send a request's whole body, counted from when the service
    /// starts reading it (right after the head); past it 408 and the connection is closed.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Connections served at once; at the limit new ones wait in the listen queue until one
    /// closes [default: half the file-descriptor limit, less 64].
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Service name in logs, traces, metrics and /healthz, when neither `OTEL_SERVICE_NAME` nor
    /// `service.name` in `OTEL_RESOURCE_ATTRIBUTES` names it [default: the binary's name].
    #[arg(long, env = "SERVICE_NAME")]
    pub service_name: Option<String>,

    /// The service's name in logs, traces, metrics and /healthz; wins over `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES` and over `SERVICE_NAME`.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,

    /// Attributes of the resource every exported span and log record names: `key=value` pairs
    /// separated by commas, values percent-encoded where needed. A key set here is kept as
    /// written; `SERVICE_VERSION`, `ENVIRONMENT`, `POD_NAME` and `NODE_NAME` fill only the keys
    /// it leaves out.
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub resource_attributes: Option<String>,

    /// `true` turns the OpenTelemetry SDK off: nothing is exported, whatever the other `OTEL_*`
    /// variables say (trace ids are still made and logged). `false` or empty: on.
    #[arg(long, env = "OTEL_SDK_DISABLED", default_value = "false")]
    pub sdk_disabled: String,

    /// Service version in traces and /healthz.
    #[arg(long, env = "SERVICE_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub service_version: String,

    /// Deployment environment (development, staging, production).
    #[arg(long, env = "ENVIRONMENT", default_value = "development")]
    pub environment: String,

    /// Pod name (injected by Kubernetes).
    #[arg(long, env = "POD_NAME", default_value = "local-dev")]
    pub pod_name: String,

    /// Node name (injected by Kubernetes).
    #[arg(long, env = "NODE_NAME", default_value = "local-dev")]
    pub node_name: String,

    /// Log level or tracing filter directive (e.g. `info`, `debug,hyper=info`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Also append JSON logs to this file (for a log-shipper sidecar to tail).
    #[arg(long, env = "LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Where spans are exported: `otlp`, `console` (stdout) or `none` [default: `otlp` when an
    /// OTLP endpoint is set, else `none`].
    #[arg(long, env = "OTEL_TRACES_EXPORTER")]
    pub traces_exporter: Option<String>,

    /// Where log records are exported besides the JSON lines: `otlp`, `console` or `none`.
    #[arg(long, env = "OTEL_LOGS_EXPORTER", default_value = "none")]
    pub logs_exporter: String,

    /// OTLP endpoint of every signal, e.g. http://localhost:4317 (gRPC) or
    /// http://localhost:4318 (HTTP; `/v1/traces` and `/v1/logs` are appended). `https://` uses
    /// TLS. `OTLP_ENDPOINT` is accepted too. Unset: spans are still created (trace ids appear in
    /// logs) but not exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP endpoint for spans, used as written (wins over OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP endpoint for log records, used as written (wins over OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")]
    pub otlp_logs_endpoint: Option<String>,

    /// OTLP transport: `grpc` or `http/protobuf` [default: grpc].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// OTLP transport for spans (wins over OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")]
    pub otlp_traces_protocol: Option<String>,

    /// OTLP transport for log records (wins over OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL")]
    pub otlp_logs_protocol: Option<String>,

    /// Headers sent with each OTLP export (an API key, say): `key=value` pairs separated by
    /// commas, values percent-encoded where needed.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", hide_env_values = true)]
    pub otlp_headers: Option<String>,

    /// Headers sent with each span export (instead of OTEL_EXPORTER_OTLP_HEADERS).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_HEADERS", hide_env_values = true)]
    pub otlp_traces_headers: Option<String>,

    /// Headers sent with each log export (instead of OTEL_EXPORTER_OTLP_HEADERS).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_LOGS_HEADERS", hide_env_values = true)]
    pub otlp_logs_headers: Option<String>,

    /// Longest an OTLP export may take, retries included, in ms.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value_t = 10_000)]
    pub otlp_timeout_ms: u64,

    /// Longest a span export may take, in ms (wins over OTEL_EXPORTER_OTLP_TIMEOUT).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")]
    pub otlp_traces_timeout_ms: Option<u64>,

    /// Longest a log export may take, in ms (wins over OTEL_EXPORTER_OTLP_TIMEOUT).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT")]
    pub otlp_logs_timeout_ms: Option<u64>,

    /// Compression of OTLP exports: `gzip` or `none` [default: none].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_COMPRESSION")]
    pub otlp_compression: Option<String>,

    /// Compression of span exports (wins over OTEL_EXPORTER_OTLP_COMPRESSION).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")]
    pub otlp_traces_compression: Option<String>,

    /// Compression of log exports (wins over OTEL_EXPORTER_OTLP_COMPRESSION).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION")]
    pub otlp_logs_compression: Option<String>,

    /// The trace sampler: always_on, always_off, traceidratio, parentbased_always_on (default),
    /// parentbased_always_off or parentbased_traceidratio.
    #[arg(long, env = "OTEL_TRACES_SAMPLER")]
    pub traces_sampler: Option<String>,

    /// The ratio of the `traceidratio` samplers, 0..=1 [default: 1].
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub traces_sampler_arg: Option<String>,

    /// Longest a span waits before its batch is sent, in ms (exporting services).
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", default_value_t = 5_000)]
    pub bsp_schedule_delay_ms: u64,

    /// Spans that may wait to be exported; past it new spans are dropped.
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = 2_048)]
    pub bsp_max_queue_size: usize,

    /// Spans per export request (at most OTEL_BSP_MAX_QUEUE_SIZE).
    #[arg(long, env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default_value_t = 512)]
    pub bsp_max_export_batch_size: usize,

    /// `off` disables every injected latency and failure (benchmarks); `on` uses the profile below.
    #[arg(long, env = "SIMULATION", default_value = "on", value_parser = BoolishValueParser::new())]
    pub simulation: bool,

    /// Injected latency range in ms, `MIN-MAX` or `N` [default: the service's default simulation profile].
    #[arg(long, env = "SIM_LATENCY_MS")]
    pub sim_latency_ms: Option<String>,

    /// Share of requests (0..=1) that get the injected latency.
    #[arg(long, env = "SIM_LATENCY_RATE")]
    pub sim_latency_rate: Option<f64>,

    /// Share of requests (0..=1) answered with an injected failure.
    #[arg(long, env = "SIM_FAILURE_RATE")]
    pub sim_failure_rate: Option<f64>,

    /// HTTP status of an injected failure.
    #[arg(long, env = "SIM_FAILURE_STATUS")]
    pub sim_failure_status: Option<u16>,

    /// Which business routes the simulation applies to: reads, writes, all or none.
    #[arg(long, env = "SIM_APPLIES_TO")]
    pub sim_applies_to: Option<AppliesTo>,

    /// Honour per-request `x-fault-delay-ms` / `x-fault-abort` headers (Envoy-style).
    #[arg(long, env = "SIM_HEADER_FAULTS", value_parser = BoolishValueParser::new())]
    pub sim_header_faults: Option<bool>,

    /// Redis: one URL for one server (redis://127.0.0.1:6379/0; rediss:// for TLS), or a
    /// comma-separated list of node URLs for a Redis Cluster (redis://h1:7001,redis://h2:7002,…).
    /// Unset: the service keeps its state in memory.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis address as `host:port`, accepted for compatibility; used when REDIS_URL is unset.
    #[arg(long, env = "REDIS_ADDR")]
    pub redis_addr: Option<String>,

    /// Bearer token for `/admin/*`. Unset: the admin API answers 401 to everyone.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Secret shared by the gateway and the services behind it (at least 32 characters, e.g.
    /// `openssl rand -hex 32`). Set: a service answers only requests carrying a short-lived
    /// credential signed with it (the gateway's, naming the user it verified, or another
    /// service's) and 401 to the rest; /admin/* takes the credential or ADMIN_TOKEN; the probes,
    /// /metrics, /openapi.json and /docs stay open. Unset: a service answers whoever reaches it.
    #[arg(long, env = "SERVICE_AUTH_SECRET", hide_env_values = true)]
    pub service_auth_secret: Option<String>,

    /// Enable the `POST /stress` CPU/memory load generator (autoscaling demos).
    #[arg(long, env = "STRESS_ENABLED", default_value = "false", value_parser = BoolishValueParser::new())]
    pub stress_enabled: bool,

    /// `POST /stress` also needs `Authorization: Bearer $ADMIN_TOKEN` (the gateway turns this on
    /// whenever its edge auth is on).
    #[arg(long, env = "STRESS_REQUIRE_ADMIN", default_value = "false", value_parser = BoolishValueParser::new())]
    pub stress_require_admin: bool,

    /// Largest accepted request body, in bytes (413 beyond).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// On SIGTERM, keep serving (with /readyz failing) this long so load balancers notice, in ms.
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value_t = 1000)]
    pub shutdown_drain_ms: u64,

    /// Then wait at most this long for in-flight requests to finish, in ms.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
}

/// The shortest `SERVICE_AUTH_SECRET`: HMAC-SHA256 keys of at least 256 bits (RFC 7518 §3.2).
pub const SERVICE_AUTH_SECRET_MIN_LEN: usize = 32;

/// What differs between services when resolving [`CommonConfig`].
#[derive(Debug, Clone)]
pub struct ServiceDefaults {
    pub name: &'static str,
    pub port: u16,
    pub simulation: SimulationProfile,
    /// The service is where outside requests enter (the gateway): a caller's `traceparent`
    /// gives its trace id, but this service's own sampler decides whether the trace is
    /// recorded, so a public client cannot have every request sampled.
    pub decides_sampling: bool,
}

/// Who this process is: in every log line, span resource and `/healthz`.
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    pub name: String,
    pub version: String,
    pub environment: String,
    pub pod_name: String,
    pub node_name: String,
}

/// [`CommonConfig`] after defaults and validation.
#[derive(Debug, Clone)]
pub struct Settings {
    pub identity: ServiceIdentity,
    pub bind_addr: IpAddr,
    pub port: u16,
    /// The timeouts of each connection (`HEADER_READ_TIMEOUT`, `IDLE_TIMEOUT`,
    /// `BODY_READ_TIMEOUT`).
    pub connection_timeouts: ConnectionTimeouts,
    /// `MAX_CONNECTIONS`; `None`: sized from the file-descriptor limit when serving.
    pub max_connections: Option<usize>,
    pub log_level: String,
    pub log_file: Option<PathBuf>,
    /// Where spans go (`OTEL_TRACES_EXPORTER` and the OTLP settings of traces).
    pub traces_export: SignalExport,
    /// Where log records go besides the JSON lines (`OTEL_LOGS_EXPORTER`).
    pub logs_export: SignalExport,
    /// `OTEL_RESOURCE_ATTRIBUTES`, decoded, in the order given.
    pub resource_attributes: Vec<(String, String)>,
    /// Decides which spans are recorded and exported (`OTEL_TRACES_SAMPLER`).
    pub sampler: Sampler,
    /// [`ServiceDefaults::decides_sampling`].
    pub decides_sampling: bool,
    pub span_queue: QueueSettings,
    /// `redis://…` when Redis is configured (REDIS_URL, or REDIS_ADDR as `host:port`).
    pub redis_url: Option<String>,
    pub simulation: SimulationProfile,
    pub admin_token: Option<String>,
    /// `SERVICE_AUTH_SECRET`: signs and checks the credentials between services.
    pub service_auth_secret: Option<String>,
    pub stress_enabled: bool,
    pub stress_require_admin: bool,
    pub max_body_bytes: usize,
    pub shutdown_drain: Duration,
    pub shutdown_grace: Duration,
}

impl CommonConfig {
    /// Apply the service's defaults and the aliases accepted for compatibility, then validate
    /// everything.
    pub fn resolve(self, defaults: ServiceDefaults) -> anyhow::Result<Settings> {
        let resource_attributes = self
            .resource_attributes
            .as_deref()
            .map(parse_resource_attributes)
            .transpose()
            .context("OTEL_RESOURCE_ATTRIBUTES")?
            .unwrap_or_default();
        // The standard names win over ShopStack's own, so a setup written for any
        // OpenTelemetry SDK names the service the same here; the one name is then used in the
        // logs, /healthz, the metrics and the traces alike.
        let resource_name = resource_attributes
            .iter()
            .find(|(key, _)| key == "service.name")
            .map(|(_, value)| value.clone());
        let name = match (self.otel_service_name, resource_name, self.service_name) {
            (Some(name), _, _) if !name.trim().is_empty() => name,
            (Some(_), _, _) => bail!("OTEL_SERVICE_NAME must not be empty"),
            (None, Some(name), _) if !name.trim().is_empty() => name,
            (None, Some(_), _) => bail!("OTEL_RESOURCE_ATTRIBUTES: service.name must not be empty"),
            (None, None, Some(name)) if name.trim().is_empty() => bail!("SERVICE_NAME must not be empty"),
            (None, None, name) => name.unwrap_or_else(|| defaults.name.to_string()),
        };
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .with_context(|| format!("LOG_LEVEL={:?} is not a valid level or filter", self.log_level))?;

        // OTLP_ENDPOINT is accepted for compatibility; the standard name wins when both are set.
        let otlp = OtlpOptions {
            endpoint: non_empty(self.otlp_endpoint)
                .or_else(|| non_empty(std::env::var("OTLP_ENDPOINT").ok())),
            protocol: self.otlp_protocol,
            headers: self.otlp_headers,
            timeout_ms: Some(self.otlp_timeout_ms),
            compression: self.otlp_compression,
        };
        let traces = SignalOptions {
            signal: "TRACES",
            path: "/v1/traces",
            exporter_variable: "OTEL_TRACES_EXPORTER",
            exporter: non_empty(self.traces_exporter),
            otlp: OtlpOptions {
                endpoint: non_empty(self.otlp_traces_endpoint),
                protocol: self.otlp_traces_protocol,
                headers: self.otlp_traces_headers,
                timeout_ms: self.otlp_traces_timeout_ms,
                compression: self.otlp_traces_compression,
            },
        };
        let logs = SignalOptions {
            signal: "LOGS",
            path: "/v1/logs",
            exporter_variable: "OTEL_LOGS_EXPORTER",
            exporter: non_empty(Some(self.logs_exporter)).or_else(|| Some("none".to_owned())),
            otlp: OtlpOptions {
                endpoint: non_empty(self.otlp_logs_endpoint),
                protocol: self.otlp_logs_protocol,
                headers: self.otlp_logs_headers,
                timeout_ms: self.otlp_logs_timeout_ms,
                compression: self.otlp_logs_compression,
            },
        };
        // Everything is checked even when the SDK is off, so that turning it on cannot fail.
        let traces_export = traces.resolve(&otlp)?;
        let logs_export = logs.resolve(&otlp)?;
        // The specification's boolean: `true` in any case; empty is unset.
        let sdk_disabled = match self.sdk_disabled.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" | "" => false,
            _ => bail!(
                "OTEL_SDK_DISABLED={:?} is neither true nor false",
                self.sdk_disabled
            ),
        };
        let (traces_export, logs_export) = if sdk_disabled {
            (SignalExport::None, SignalExport::None)
        } else {
            (traces_export, logs_export)
        };
        let sampler = parse_sampler(self.traces_sampler.as_deref(), self.traces_sampler_arg.as_deref())?;
        let span_queue = QueueSettings {
            schedule_delay: Duration::from_millis(self.bsp_schedule_delay_ms),
            max_queue_size: self.bsp_max_queue_size,
            max_export_batch_size: self.bsp_max_export_batch_size,
        };
        if span_queue.schedule_delay.is_zero() {
            bail!("OTEL_BSP_SCHEDULE_DELAY must be more than 0 ms");
        }
        if span_queue.max_export_batch_size == 0
            || span_queue.max_export_batch_size > span_queue.max_queue_size
        {
            bail!(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE must be between 1 and OTEL_BSP_MAX_QUEUE_SIZE ({})",
                span_queue.max_queue_size
            );
        }

        let mut simulation = defaults.simulation;
        simulation.enabled = self.simulation;
        if let Some(range) = self.sim_latency_ms {
            let (min, max) = parse_latency_range(&range).context("SIM_LATENCY_MS")?;
            simulation.latency_min_ms = min;
            simulation.latency_max_ms = max;
        }
        if let Some(rate) = self.sim_latency_rate {
            simulation.latency_rate = rate;
        }
        if let Some(rate) = self.sim_failure_rate {
            simulation.failure_rate = rate;
        }
        if let Some(status) = self.sim_failure_status {
            simulation.failure_status = status;
        }
        if let Some(applies_to) = self.sim_applies_to {
            simulation.applies_to = applies_to;
        }
        if let Some(header_faults) = self.sim_header_faults {
            simulation.header_faults = header_faults;
        }
        simulation
            .validate()
            .map_err(|problem| anyhow::anyhow!("simulation settings (SIM_*): {problem}"))?;

        let redis_url = self
            .redis_url
            .or(self.redis_addr)
            .filter(|value| !value.trim().is_empty())
            .map(|value| normalise_redis_url(&value));
        if let Some(url) = &redis_url {
            validate_redis_nodes(url)?;
        }

        let admin_token = self.admin_token.filter(|token| !token.is_empty());
        if let Some(token) = &admin_token
            && token.len() < 8
        {
            bail!("ADMIN_TOKEN must be at least 8 characters");
        }
        // Set but empty is a mistake (an unfilled template), not "off": refused like a short one.
        if let Some(secret) = &self.service_auth_secret
            && secret.len() < SERVICE_AUTH_SECRET_MIN_LEN
        {
            bail!(
                "SERVICE_AUTH_SECRET must be at least {SERVICE_AUTH_SECRET_MIN_LEN} characters (e.g. `openssl rand -hex 32`)"
            );
        }
        if self.max_body_bytes < 1024 {
            bail!("MAX_BODY_BYTES must be at least 1024");
        }
        let connection_timeouts = ConnectionTimeouts {
            header_read: self.header_read_timeout,
            idle: self.idle_timeout,
            body_read: self.body_read_timeout,
        };
        connection_timeouts.validate()?;
        if let Some(max) = self.max_connections
            && !(1..=MAX_CONNECTIONS_CEILING).contains(&max)
        {
            bail!("MAX_CONNECTIONS must be between 1 and {MAX_CONNECTIONS_CEILING}");
        }

        Ok(Settings {
            identity: ServiceIdentity {
                name,
                version: self.service_version,
                environment: self.environment,
                pod_name: self.pod_name,
                node_name: self.node_name,
            },
            bind_addr: self.bind_addr,
            port: self.port.unwrap_or(defaults.port),
            connection_timeouts,
            max_connections: self.max_connections,
            log_level: self.log_level,
            log_file: self.log_file,
            traces_export,
            logs_export,
            resource_attributes,
            sampler,
            decides_sampling: defaults.decides_sampling,
            span_queue,
            redis_url,
            simulation,
            admin_token,
            service_auth_secret: self.service_auth_secret,
            stress_enabled: self.stress_enabled,
            stress_require_admin: self.stress_require_admin,
            max_body_bytes: self.max_body_bytes,
            shutdown_drain: Duration::from_millis(self.shutdown_drain_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        })
    }
}

/// Where one signal — spans or log records — is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalExport {
    /// Not exported (spans still get their ids, which the log lines carry).
    None,
    /// Written to stdout by the SDK's console exporter (for a look while developing).
    Console,
    /// Sent to an OTLP receiver.
    Otlp(OtlpTarget),
}

/// An OTLP receiver of one signal and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    pub protocol: OtlpProtocol,
    /// The whole URL: for HTTP, with the signal's path (`/v1/traces`) already added where the
    /// endpoint of every signal was given.
    pub endpoint: Url,
    /// Lowercase names, decoded values.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
}

/// The OTLP transports the services speak (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    /// `grpc` or `http/protobuf`; anything else is refused, naming `variable`.
    pub fn parse(variable: &str, value: &str) -> anyhow::Result<Self> {
        match value.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => bail!("{variable}=\"http/json\" is not supported: use grpc or http/protobuf"),
            other => bail!("{variable}={other:?} is not an OTLP protocol: use grpc or http/protobuf"),
        }
    }

    /// The endpoint used when `OTEL_{SIGNAL}_EXPORTER=otlp` names no endpoint (the
    /// specification's), without the signal path.
    fn default_endpoint(self) -> &'static str {
        match self {
            Self::Grpc => "http://localhost:4317",
            Self::HttpProtobuf => "http://localhost:4318",
        }
    }
}

/// The OTLP settings of every signal, or of one (`OTEL_EXPORTER_OTLP_*` or
/// `OTEL_EXPORTER_OTLP_{SIGNAL}_*`).
struct OtlpOptions {
    endpoint: Option<String>,
    protocol: Option<String>,
    headers: Option<String>,
    timeout_ms: Option<u64>,
    compression: Option<String>,
}

/// One signal's exporter and its own OTLP settings.
struct SignalOptions {
    /// `TRACES` or `LOGS`, as in the variable names.
    signal: &'static str,
    /// What OTLP/HTTP appends to the endpoint of every signal.
    path: &'static str,
    exporter_variable: &'static str,
    exporter: Option<String>,
    otlp: OtlpOptions,
}

impl SignalOptions {
    /// The signal's own setting, else every signal's: (variable, value).
    fn pick<'a>(
        &'a self,
        generic: &'a OtlpOptions,
        setting: &str,
        field: impl Fn(&OtlpOptions) -> Option<&str>,
    ) -> Option<(String, &'a str)> {
        let own =
            field(&self.otlp).map(|value| (format!("OTEL_EXPORTER_OTLP_{}_{setting}", self.signal), value));
        own.or_else(|| field(generic).map(|value| (format!("OTEL_EXPORTER_OTLP_{setting}"), value)))
            .filter(|(_, value)| !value.trim().is_empty())
    }

    /// Check every setting of the signal and say where it goes. Without an exporter named,
    /// spans go to OTLP when an endpoint is set (as they always have) and nowhere otherwise.
    fn resolve(&self, generic: &OtlpOptions) -> anyhow::Result<SignalExport> {
        let protocol = match self.pick(generic, "PROTOCOL", |options| options.protocol.as_deref()) {
            Some((variable, value)) => OtlpProtocol::parse(&variable, value)?,
            None => OtlpProtocol::Grpc,
        };
        let gzip = match self.pick(generic, "COMPRESSION", |options| options.compression.as_deref()) {
            Some((_, value)) if value.trim() == "gzip" => true,
            Some((_, value)) if value.trim() == "none" => false,
            Some((variable, value)) => bail!("{variable}={value:?} is not a compression: use gzip or none"),
            None => false,
        };
        let headers = match self.pick(generic, "HEADERS", |options| options.headers.as_deref()) {
            Some((variable, value)) => parse_otlp_headers(value).context(variable)?,
            None => Vec::new(),
        };
        let (timeout_variable, timeout_ms) = match self.otlp.timeout_ms {
            Some(ms) => (format!("OTEL_EXPORTER_OTLP_{}_TIMEOUT", self.signal), ms),
            None => (
                "OTEL_EXPORTER_OTLP_TIMEOUT".to_owned(),
                generic.timeout_ms.unwrap_or(10_000),
            ),
        };
        if timeout_ms == 0 {
            bail!("{timeout_variable} must be more than 0 ms");
        }
        // The signal's own endpoint is used as written; every signal's gets the signal's path
        // over HTTP (the OTLP exporter specification's rule).
        let endpoint = match (&self.otlp.endpoint, &generic.endpoint) {
            (Some(own), _) => Some(
                parse_http_url(own)
                    .with_context(|| format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", self.signal))?,
            ),
            (None, Some(every)) => {
                parse_http_url(every).context("OTEL_EXPORTER_OTLP_ENDPOINT")?;
                Some(
                    self.signal_url(protocol, every)
                        .context("OTEL_EXPORTER_OTLP_ENDPOINT")?,
                )
            }
            (None, None) => None,
        };
        let exporter = match &self.exporter {
            Some(name) => name.trim(),
            None if endpoint.is_some() => "otlp",
            None => "none",
        };
        Ok(match exporter {
            "none" => SignalExport::None,
            "console" => SignalExport::Console,
            "otlp" => {
                let endpoint = match endpoint {
                    Some(endpoint) => endpoint,
                    None => self.signal_url(protocol, protocol.default_endpoint())?,
                };
                SignalExport::Otlp(OtlpTarget {
                    protocol,
                    endpoint,
                    headers,
                    timeout: Duration::from_millis(timeout_ms),
                    gzip,
                })
            }
            other => bail!(
                "{}={other:?} is not an exporter: use otlp, console or none",
                self.exporter_variable
            ),
        })
    }

    /// The URL of this signal at `base`, the endpoint of every signal.
    fn signal_url(&self, protocol: OtlpProtocol, base: &str) -> anyhow::Result<Url> {
        match protocol {
            OtlpProtocol::Grpc => parse_http_url(base),
            OtlpProtocol::HttpProtobuf => {
                parse_http_url(&format!("{}{}", base.trim().trim_end_matches('/'), self.path))
            }
        }
    }
}

/// `Some` only for text that is not blank.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.trim().is_empty())
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, keys and values
/// percent-decoded and trimmed (the OpenTelemetry specification's format); a pair without `=`
/// or with an empty key is refused.
pub fn parse_resource_attributes(value: &str) -> anyhow::Result<Vec<(String, String)>> {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text.trim())
            .decode_utf8()
            .map(|text| text.into_owned())
            .with_context(|| format!("{text:?} is not UTF-8 once decoded"))
    };
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("{pair:?} is not key=value"))?;
            let key = decode(key)?;
            if key.is_empty() {
                bail!("{pair:?} has no key");
            }
            Ok((key, decode(value)?))
        })
        .collect()
}

/// The sampler when `OTEL_TRACES_SAMPLER` is unset: parent-based, always on.
pub fn default_sampler() -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, as the OpenTelemetry specification names
/// them (the remote samplers are not built in). Unset: [`default_sampler`].
pub fn parse_sampler(name: Option<&str>, arg: Option<&str>) -> anyhow::Result<Sampler> {
    let ratio = || -> anyhow::Result<f64> {
        let Some(arg) = arg.map(str::trim).filter(|arg| !arg.is_empty()) else {
            return Ok(1.0);
        };
        match arg.parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
            _ => bail!("OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio between 0 and 1"),
        }
    };
    let Some(name) = name.map(str::trim).filter(|name| !name.is_empty()) else {
        return Ok(default_sampler());
    };
    Ok(match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?))),
        other => bail!(
            "OTEL_TRACES_SAMPLER={other:?} is not one of always_on, always_off, traceidratio, \
             parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
        ),
    })
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, keys case-insensitive
/// (lowercased), values percent-decoded; each must make a valid header.
pub fn parse_otlp_headers(value: &str) -> anyhow::Result<Vec<(String, String)>> {
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .with_context(|| format!("{pair:?} is not key=value"))?;
            let name = name.trim().to_ascii_lowercase();
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .with_context(|| format!("the value of {name:?} is not UTF-8 once decoded"))?
                .into_owned();
            axum::http::HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("{name:?} is not a header name"))?;
            axum::http::HeaderValue::from_str(&value)
                .with_context(|| format!("the value of {name:?} is not a header value"))?;
            Ok((name, value))
        })
        .collect()
}

/// A `http://` or `https://` URL with a host.
pub fn parse_http_url(value: &str) -> anyhow::Result<Url> {
    let url = Url::parse(value.trim()).with_context(|| format!("{value:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        bail!("{value:?} must be an http:// or https:// URL with a host");
    }
    Ok(url)
}

/// Upstream base URLs from a comma-separated list (several means replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlList(pub Vec<Url>);

impl std::str::FromStr for UrlList {
    type Err = anyhow::Error;

    fn from_str(value: &str) -> anyhow::Result<Self> {
        parse_url_list(value).map(UrlList)
    }
}

/// A comma-separated list of upstream base URLs (several means replicas).
pub fn parse_url_list(value: &str) -> anyhow::Result<Vec<Url>> {
    let urls = value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_http_url)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if urls.is_empty() {
        bail!("at least one URL is required");
    }
    Ok(urls)
}

/// `20-60` → (20, 60); `50` → (50, 50).
fn parse_latency_range(value: &str) -> anyhow::Result<(u64, u64)> {
    let parse = |part: &str| {
        part.trim()
            .parse::<u64>()
            .with_context(|| format!("{value:?}: expected MIN-MAX or N milliseconds"))
    };
    match value.split_once('-') {
        Some((min, max)) => Ok((parse(min)?, parse(max)?)),
        None => {
            let both = parse(value)?;
            Ok((both, both))
        }
    }
}

/// Duration written as `30d`, `12h`, `15m`, `45s` or `250ms`.
pub fn parse_duration(value: &str) -> anyhow::Result<Duration> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .with_context(|| format!("{value:?}: a unit is required (ms, s, m, h, d)"))?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("{value:?}: expected a number followed by a unit"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        other => bail!("{value:?}: unknown unit {other:?} (use ms, s, m, h or d)"),
    };
    Ok(Duration::from_secs(seconds))
}

/// The largest `MAX_CONNECTIONS` accepted (far beyond any file-descriptor limit in practice).
pub const MAX_CONNECTIONS_CEILING: usize = 10_000_000;

/// How long a connection may take over each part of a request, and wait between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// The whole request head, from the connection's start or the first byte after an idle wait
    /// (`HEADER_READ_TIMEOUT`).
    pub header_read: Duration,
    /// Waiting for the next request on a keep-alive connection (`IDLE_TIMEOUT`).
    pub idle: Duration,
    /// The whole request body, from when the service starts reading it (`BODY_READ_TIMEOUT`).
    pub body_read: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(75),
            body_read: Duration::from_secs(30),
        }
    }
}

impl ConnectionTimeouts {
    /// Each between 1 ms and a day.
    pub fn validate(&self) -> anyhow::Result<()> {
        let range = Duration::from_millis(1)..=Duration::from_secs(86_400);
        for (name, value) in [
            ("HEADER_READ_TIMEOUT", self.header_read),
            ("IDLE_TIMEOUT", self.idle),
            ("BODY_READ_TIMEOUT", self.body_read),
        ] {
            if !range.contains(&value) {
                bail!("{name} must be between 1ms and 1d, not {value:?}");
            }
        }
        Ok(())
    }
}

/// The SDK batch span processor's settings: when batches are sent, and how many spans may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// The batch being filled is sent at least this often (`OTEL_BSP_SCHEDULE_DELAY`).
    pub schedule_delay: Duration,
    /// Spans waiting beyond this are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue_size: usize,
    /// Spans per request to the endpoint (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_export_batch_size: usize,
}

impl Default for QueueSettings {
    /// The OpenTelemetry specification's defaults.
    fn default() -> Self {
        Self {
            schedule_delay: Duration::from_millis(5_000),
            max_queue_size: 2_048,
            max_export_batch_size: 512,
        }
    }
}

/// `redis://host:port/db` as given, or the `host:port` form of `REDIS_ADDR` (accepted for
/// compatibility); in a comma-separated list (a Redis Cluster's nodes), each entry so.
pub fn normalise_redis_url(value: &str) -> String {
    redis_nodes(value).join(",")
}

/// The entries of a `REDIS_URL`: one (a single server) or several (the seed nodes of a Redis
/// Cluster), each a `redis://` or `rediss://` URL.
pub fn redis_nodes(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            if entry.contains("://") {
                entry.to_owned()
            } else {
                format!("redis://{entry}")
            }
        })
        .collect()
}

/// Every node URL parses; a cluster's nodes all use the same scheme and no database number (a
/// Redis Cluster has database 0 only).
fn validate_redis_nodes(url: &str) -> anyhow::Result<()> {
    let nodes = redis_nodes(url);
    if nodes.is_empty() {
        bail!("REDIS_URL names no server");
    }
    let mut schemes = Vec::new();
    for node in &nodes {
        let parsed = ::redis::parse_redis_url(node)
            .with_context(|| format!("REDIS_URL entry {node:?} is not a redis:// or rediss:// URL"))?;
        if nodes.len() > 1 && !matches!(parsed.path(), "" | "/" | "/0") {
            bail!("REDIS_URL entry {node:?} names a database: a Redis Cluster has database 0 only");
        }
        if !schemes.contains(&parsed.scheme().to_owned()) {
            schemes.push(parsed.scheme().to_owned());
        }
    }
    if schemes.len() > 1 {
        bail!("REDIS_URL mixes {schemes:?}: every node of a cluster is reached the same way");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_range_forms() {
        assert_eq!(parse_latency_range("20-60").ok(), Some((20, 60)));
        assert_eq!(parse_latency_range("5").ok(), Some((5, 5)));
        assert!(parse_latency_range("fast").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").ok(), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("250ms").ok(), Some(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10y").is_err());
    }

    #[test]
    fn otlp_headers_are_pairs_with_lowercased_names_and_decoded_values() {
        let headers = parse_otlp_headers("Api-Key=secret%20one, x-tenant = blue ,").unwrap_or_default();
        assert_eq!(
            headers,
            [
                ("api-key".to_owned(), "secret one".to_owned()),
                ("x-tenant".to_owned(), "blue".to_owned())
            ]
        );
        assert!(parse_otlp_headers("no-equals-sign").is_err());
        assert!(parse_otlp_headers("bad name=1").is_err());
        assert!(
            parse_otlp_headers("key=line%0Abreak").is_err(),
            "a decoded value must still be a header value"
        );
    }

    /// `CommonConfig` from these flags, resolved (an error message when refused).
    fn resolve_flags(flags: &[&str]) -> Result<Settings, String> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            common: CommonConfig,
        }
        let defaults = ServiceDefaults {
            name: "test",
            port: 1,
            simulation: SimulationProfile::OFF,
            decides_sampling: false,
        };
        Flags::parse_from(std::iter::once("test").chain(flags.iter().copied()))
            .common
            .resolve(defaults)
            .map_err(|error| format!("{error:#}"))
    }

    #[test]
    fn otlp_export_is_grpc_by_default_and_http_protobuf_on_request() {
        let traces = |flags: &[&str]| resolve_flags(flags).map(|settings| settings.traces_export);
        assert_eq!(
            traces(&[]),
            Ok(SignalExport::None),
            "no endpoint: nothing exported"
        );
        let Ok(SignalExport::Otlp(grpc)) = traces(&["--otlp-endpoint", "https://collector:4317"]) else {
            panic!("an endpoint alone exports spans over OTLP");
        };
        assert_eq!(grpc.protocol, OtlpProtocol::Grpc);
        assert_eq!(grpc.endpoint.as_str(), "https://collector:4317/");
        assert!(!grpc.gzip);

        let Ok(SignalExport::Otlp(http)) = traces(&[
            "--otlp-endpoint",
            "http://collector:4318/",
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-compression",
            "gzip",
            "--otlp-headers",
            "api-key=one",
            "--otlp-traces-headers",
            "api-key=two",
            "--otlp-traces-timeout-ms",
            "250",
        ]) else {
            panic!("http/protobuf");
        };
        assert_eq!(http.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(http.endpoint.as_str(), "http://collector:4318/v1/traces");
        assert!(http.gzip);
        assert_eq!(http.headers, [("api-key".to_owned(), "two".to_owned())]);
        assert_eq!(http.timeout, Duration::from_millis(250));

        // The signal's own endpoint is used as written.
        let Ok(SignalExport::Otlp(own)) = traces(&[
            "--otlp-traces-endpoint",
            "http://collector:4318/custom",
            "--otlp-traces-protocol",
            "http/protobuf",
        ]) else {
            panic!("a traces endpoint");
        };
        assert_eq!(own.endpoint.as_str(), "http://collector:4318/custom");

        // Named exporters; `otlp` without an endpoint goes to the specification's default.
        let Ok(SignalExport::Otlp(default)) = traces(&["--traces-exporter", "otlp"]) else {
            panic!("otlp without an endpoint");
        };
        assert_eq!(default.endpoint.as_str(), "http://localhost:4317/");
        assert_eq!(
            traces(&["--traces-exporter", "console"]),
            Ok(SignalExport::Console)
        );
        assert_eq!(
            traces(&[
                "--traces-exporter",
                "none",
                "--otlp-endpoint",
                "http://collector:4317"
            ]),
            Ok(SignalExport::None)
        );
        let logs = resolve_flags(&[
            "--logs-exporter",
            "otlp",
            "--otlp-endpoint",
            "http://c:4318",
            "--otlp-protocol",
            "http/protobuf",
        ])
        .map(|settings| settings.logs_export);
        let Ok(SignalExport::Otlp(logs)) = logs else {
            panic!("OTLP logs: {logs:?}");
        };
        assert_eq!(logs.endpoint.as_str(), "http://c:4318/v1/logs");
    }

    #[test]
    fn unknown_protocols_exporters_and_compressions_are_refused_at_startup() {
        for (flags, named) in [
            (&["--otlp-protocol", "http"][..], "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (
                &["--otlp-traces-protocol", "http/json"],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            ),
            (
                &["--otlp-logs-protocol", "grcp"],
                "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
            ),
            (&["--traces-exporter", "jaeger"], "OTEL_TRACES_EXPORTER"),
            (&["--logs-exporter", "loki"], "OTEL_LOGS_EXPORTER"),
            (&["--otlp-compression", "zstd"], "OTEL_EXPORTER_OTLP_COMPRESSION"),
            (
                &["--otlp-endpoint", "collector:4317"],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                &["--otlp-traces-timeout-ms", "0"],
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            ),
            (&["--resource-attributes", "team"], "OTEL_RESOURCE_ATTRIBUTES"),
            // Checked even with the SDK off, so turning it on cannot fail.
            (
                &["--sdk-disabled", "TRUE", "--otlp-protocol", "udp"],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
        ] {
            let error = resolve_flags(flags).err().unwrap_or_default();
            assert!(error.contains(named), "{flags:?}: {error}");
        }
    }

    #[test]
    fn a_disabled_sdk_exports_nothing() {
        let settings = resolve_flags(&[
            "--sdk-disabled",
            "True",
            "--otlp-endpoint",
            "http://c:4317",
            "--logs-exporter",
            "otlp",
        ])
        .map(|settings| (settings.traces_export, settings.logs_export));
        assert_eq!(settings, Ok((SignalExport::None, SignalExport::None)));
        // Empty is unset (as a compose file's `${OTEL_SDK_DISABLED:-}` leaves it).
        let enabled = resolve_flags(&["--sdk-disabled", "", "--otlp-endpoint", "http://c:4317"])
            .map(|settings| settings.traces_export != SignalExport::None);
        assert_eq!(enabled, Ok(true));
        assert!(resolve_flags(&["--sdk-disabled", "maybe"]).is_err());
    }

    #[test]
    fn the_service_is_named_by_otel_service_name_then_the_resource_then_service_name() {
        let name = |flags: &[&str]| resolve_flags(flags).map(|settings| settings.identity.name);
        assert_eq!(name(&[]), Ok("test".to_owned()));
        assert_eq!(name(&["--service-name", "own"]), Ok("own".to_owned()));
        assert_eq!(
            name(&[
                "--service-name",
                "own",
                "--resource-attributes",
                "service.name=res,team=blue"
            ]),
            Ok("res".to_owned())
        );
        assert_eq!(
            name(&[
                "--service-name",
                "own",
                "--resource-attributes",
                "service.name=res",
                "--otel-service-name",
                "otel"
            ]),
            Ok("otel".to_owned())
        );
        assert!(name(&["--otel-service-name", " "]).is_err());
        let attributes = resolve_flags(&["--resource-attributes", "team=blue%2Cgreen, region = eu ,"])
            .map(|settings| settings.resource_attributes);
        assert_eq!(
            attributes,
            Ok(vec![
                ("team".to_owned(), "blue,green".to_owned()),
                ("region".to_owned(), "eu".to_owned())
            ])
        );
    }

    #[test]
    fn the_span_queue_settings_are_checked_at_startup() {
        let settings = resolve_flags(&[
            "--bsp-schedule-delay-ms",
            "250",
            "--bsp-max-queue-size",
            "100",
            "--bsp-max-export-batch-size",
            "100",
        ])
        .map(|settings| settings.span_queue);
        assert_eq!(
            settings,
            Ok(QueueSettings {
                schedule_delay: Duration::from_millis(250),
                max_queue_size: 100,
                max_export_batch_size: 100,
            })
        );
        for refused in [
            &["--bsp-schedule-delay-ms", "0"][..],
            &["--bsp-max-export-batch-size", "0"],
            &["--bsp-max-queue-size", "10", "--bsp-max-export-batch-size", "11"],
        ] {
            let error = resolve_flags(refused).err().unwrap_or_default();
            assert!(error.contains("OTEL_BSP_"), "{refused:?}: {error}");
        }
    }

    #[test]
    fn samplers_are_the_specifications_and_anything_else_is_refused() {
        let parsed = |name: Option<&str>, arg: Option<&str>| {
            parse_sampler(name, arg)
                .map(|sampler| format!("{sampler:?}"))
                .ok()
        };
        let expected = |sampler: Sampler| Some(format!("{sampler:?}"));
        assert_eq!(
            parsed(None, None),
            expected(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        );
        assert_eq!(
            parsed(Some("always_on"), Some("0.5")),
            expected(Sampler::AlwaysOn)
        );
        assert_eq!(
            parsed(Some("parentbased_traceidratio"), Some("0.1")),
            expected(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.1))))
        );
        assert_eq!(
            parsed(Some("traceidratio"), None),
            expected(Sampler::TraceIdRatioBased(1.0))
        );
        assert!(parsed(Some("traceidratio"), Some("1.5")).is_none());
        assert!(parsed(Some("traceidratio"), Some("half")).is_none());
        assert!(parsed(Some("jaeger_remote"), None).is_none());
    }

    #[test]
    fn a_redis_url_list_means_the_nodes_of_a_cluster() {
        assert_eq!(redis_nodes("redis://a:1"), ["redis://a:1"]);
        assert_eq!(
            redis_nodes(" redis://a:7001, b:7002 ,"),
            ["redis://a:7001", "redis://b:7002"]
        );
        assert_eq!(normalise_redis_url("a:1,b:2"), "redis://a:1,redis://b:2");
        assert!(resolve_flags(&["--redis-url", "redis://a:7001,redis://b:7002"]).is_ok());
        for refused in [
            "redis://a:7001/2,redis://b:7002",
            "redis://a:7001,rediss://b:7002",
            "redis://a:7001,http://b:7002",
            ",",
        ] {
            let error = resolve_flags(&["--redis-url", refused]).unwrap_err();
            assert!(error.contains("REDIS_URL"), "{refused:?}: {error}");
        }
    }

    #[test]
    fn a_service_auth_secret_is_long_enough_or_refused_even_when_empty() {
        for short in ["", "too-short"] {
            let error = resolve_flags(&["--service-auth-secret", short]).unwrap_err();
            assert!(error.contains("SERVICE_AUTH_SECRET"), "{short:?}: {error}");
        }
        let secret = "x".repeat(SERVICE_AUTH_SECRET_MIN_LEN);
        let settings = resolve_flags(&["--service-auth-secret", &secret]).unwrap();
        assert_eq!(settings.service_auth_secret.as_deref(), Some(secret.as_str()));
        assert_eq!(resolve_flags(&[]).unwrap().service_auth_secret, None);
    }

    #[test]
    fn connection_limits_are_checked_at_startup() {
        let defaults = resolve_flags(&[]).map(|settings| {
            (
                settings.bind_addr,
                settings.connection_timeouts,
                settings.max_connections,
            )
        });
        assert_eq!(
            defaults,
            Ok((IpAddr::from([127, 0, 0, 1]), ConnectionTimeouts::default(), None))
        );
        let set = resolve_flags(&[
            "--header-read-timeout",
            "250ms",
            "--idle-timeout",
            "2s",
            "--body-read-timeout",
            "1m",
            "--max-connections",
            "500",
        ])
        .map(|settings| (settings.connection_timeouts, settings.max_connections));
        assert_eq!(
            set,
            Ok((
                ConnectionTimeouts {
                    header_read: Duration::from_millis(250),
                    idle: Duration::from_secs(2),
                    body_read: Duration::from_secs(60),
                },
                Some(500)
            ))
        );
        for (refused, named) in [
            (&["--header-read-timeout", "0ms"][..], "HEADER_READ_TIMEOUT"),
            (&["--idle-timeout", "2d"], "IDLE_TIMEOUT"),
            (&["--body-read-timeout", "0s"], "BODY_READ_TIMEOUT"),
            (&["--max-connections", "0"], "MAX_CONNECTIONS"),
        ] {
            let error = resolve_flags(refused).err().unwrap_or_default();
            assert!(error.contains(named), "{refused:?}: {error}");
        }
    }

    #[test]
    fn url_lists() {
        let urls = parse_url_list("http://a:1, http://b:2").unwrap_or_default();
        assert_eq!(urls.len(), 2);
        assert!(parse_url_list("ftp://a").is_err());
        assert!(parse_url_list(" , ").is_err());
    }
}
