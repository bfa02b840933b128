//! The metric types every crate registers, on the official `prometheus-client` crate, and the
//! registry that exposes them.
//!
//! A [`Registry`] is one service's: its families come out sorted by name, each sample labelled
//! with its own labels (sorted by name) and then the service's `service` label — the order and
//! names the Prometheus text format has always had here, so dashboards and rules see the same
//! series whichever format a scraper asks for. A labelled family ([`MetricVec`]) is looked up by
//! its label values without allocating, as the hot paths do on every request.
//!
//! Naming follows OpenMetrics, which `prometheus-client` writes: a counter is registered by its
//! sample name (`http_requests_total`) and its family is named without `_total`; a name ending
//! in `_seconds` or `_bytes` gets its `# UNIT` line. The exposed sample names do not change.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

/// A counter of whole events.
pub type IntCounter = Counter<u64>;
/// A gauge of whole numbers.
pub type IntGauge = Gauge<i64>;
/// Counters by `N` label values.
pub type IntCounterVec<const N: usize> = MetricVec<IntCounter, N>;
/// Gauges by `N` label values.
pub type IntGaugeVec<const N: usize> = MetricVec<IntGauge, N>;
/// Histograms by `N` label values.
pub type HistogramVec<const N: usize> = MetricVec<Histogram, N>;

/// Why a metric could not be registered (a start-up error: names are fixed in code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationError(String);

impl std::fmt::Display for RegistrationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RegistrationError {}

pub type Result<T> = std::result::Result<T, RegistrationError>;

/// What a registry entry encodes: the samples of one family, or (for a collector) whole
/// families of its own.
pub trait Family: Send + Sync + std::fmt::Debug + 'static {
    fn metric_type(&self) -> MetricType;

    /// A family without samples is left out, header and all (as a vector nobody has used yet).
    fn is_empty(&self) -> bool {
        false
    }

    /// Write the samples; every sample gets `constant` after its own labels.
    fn encode(&self, encoder: MetricEncoder<'_>, constant: &ConstantLabel) -> std::fmt::Result;
}

/// Families computed at scrape time (the `process_*` metrics), written whole, headers included.
pub trait Collector: Send + Sync + std::fmt::Debug + 'static {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>, constant: &ConstantLabel) -> std::fmt::Result;
}

/// The label every sample of a registry carries last (`service="cart"`).
#[derive(Debug, Clone)]
pub struct ConstantLabel {
    name: Cow<'static, str>,
    value: Cow<'static, str>,
}

impl ConstantLabel {
    /// Just this label, for a sample without labels of its own.
    pub fn alone(&self) -> impl EncodeLabelSet + '_ {
        [(self.name.as_ref(), self.value.as_ref())]
    }
}

#[derive(Debug)]
enum Entry {
    Family {
        /// As given (written by the collector, so `prometheus-client` appends no full stop).
        help: String,
        unit: Option<Unit>,
        /// The family's name without the unit and counter suffixes `prometheus-client` appends.
        base: String,
        family: Box<dyn Family>,
    },
    Collector(Box<dyn Collector>),
}

#[derive(Debug)]
struct Entries {
    constant: ConstantLabel,
    /// By the name the families are exposed under (a collector's: the prefix of its families).
    entries: BTreeMap<String, Entry>,
}

/// One service's metrics: cheap to clone, shared by everything that registers or renders.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<RwLock<Entries>>,
    /// The encoders' view: one collector that writes [`Entries`].
    exposed: Arc<prometheus_client::registry::Registry>,
}

#[derive(Debug)]
struct Exposed(Arc<RwLock<Entries>>);

impl prometheus_client::collector::Collector for Exposed {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let entries = self.0.read().unwrap_or_else(PoisonError::into_inner);
        for entry in entries.entries.values() {
            match entry {
                Entry::Family {
                    help,
                    unit,
                    base,
                    family,
                } => {
                    if family.is_empty() {
                        continue;
                    }
                    let metric =
                        encoder.encode_descriptor(base, help, unit.as_ref(), family.metric_type())?;
                    family.encode(metric, &entries.constant)?;
                }
                Entry::Collector(collector) => collector.encode(&mut encoder, &entries.constant)?,
            }
        }
        Ok(())
    }
}

/// The `prometheus-client` name of a family exposed as `name`: counters lose `_total` (the
/// encoder appends it to the sample), and a `_seconds` or `_bytes` unit is split off to be
/// declared (the encoder appends it again).
pub fn split_name(name: &str, metric_type: MetricType) -> Result<(String, Option<Unit>)> {
    let base = match metric_type {
        MetricType::Counter => name.strip_suffix("_total").ok_or_else(|| {
            RegistrationError(format!(
                "counter {name} must end in _total (its sample name in every exposition format)"
            ))
        })?,
        _ => name,
    };
    for (suffix, unit) in [("_seconds", Unit::Seconds), ("_bytes", Unit::Bytes)] {
        if let Some(stem) = base.strip_suffix(suffix) {
            return Ok((stem.to_owned(), Some(unit)));
        }
    }
    Ok((base.to_owned(), None))
}

impl Registry {
    /// A registry whose every sample is labelled `name="value"` last.
    pub fn with_constant_label(
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Self {
        let inner = Arc::new(RwLock::new(Entries {
            constant: ConstantLabel {
                name: name.into(),
                value: value.into(),
            },
            entries: BTreeMap::new(),
        }));
        let mut exposed = prometheus_client::registry::Registry::default();
        exposed.register_collector(Box::new(Exposed(Arc::clone(&inner))));
        Self {
            inner,
            exposed: Arc::new(exposed),
        }
    }

    fn insert(&self, name: String, entry: Entry) -> Result<()> {
        let mut entries = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if entries.entries.contains_key(&name) {
            return Err(RegistrationError(format!("metric {name} is registered twice")));
        }
        entries.entries.insert(name, entry);
        Ok(())
    }

    /// Register `family`, exposed as `name`; returns it.
    pub fn register<F: Family + Clone>(&self, name: &str, help: &str, family: F) -> Result<F> {
        if !is_valid_name(name) {
            return Err(RegistrationError(format!("{name:?} is not a metric name")));
        }
        let (base, unit) = split_name(name, family.metric_type())?;
        let entry = Entry::Family {
            help: help.to_owned(),
            unit,
            base,
            family: Box::new(family.clone()),
        };
        self.insert(name.to_owned(), entry)?;
        Ok(family)
    }

    /// Register a collector whose families all start with `prefix` (where they are sorted in).
    pub fn register_collector(&self, prefix: &str, collector: impl Collector) -> Result<()> {
        self.insert(prefix.to_owned(), Entry::Collector(Box::new(collector)))
    }

    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter> {
        self.register(name, help, Single(IntCounter::default()))
            .map(|single| single.0)
    }

    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge> {
        self.register(name, help, Single(IntGauge::default()))
            .map(|single| single.0)
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Result<Histogram> {
        let histogram = Histogram::new(buckets.iter().copied());
        self.register(name, help, Single(histogram))
            .map(|single| single.0)
    }

    pub fn counter_vec<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; N],
    ) -> Result<IntCounterVec<N>> {
        self.register(name, help, MetricVec::new(labels, IntCounter::default)?)
    }

    pub fn gauge_vec<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; N],
    ) -> Result<IntGaugeVec<N>> {
        self.register(name, help, MetricVec::new(labels, IntGauge::default)?)
    }

    pub fn histogram_vec<const N: usize>(
        &self,
        name: &str,
        help: &str,
        buckets: &'static [f64],
        labels: [&str; N],
    ) -> Result<HistogramVec<N>> {
        let vec = MetricVec::new(labels, move || Histogram::new(buckets.iter().copied()))?;
        self.register(name, help, vec)
    }

    /// The OpenMetrics text exposition (with exemplars and `# EOF`).
    pub fn encode_openmetrics(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode(out, &self.exposed)
    }

    /// The Prometheus text exposition, version 0.0.4 (no exemplars).
    pub fn encode_text(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(out, &self.exposed)
    }
}

/// Prometheus's metric name rule, `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_' || first == b':')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':')
}

/// A family of one sample without labels of its own.
#[derive(Debug, Clone)]
pub struct Single<M>(pub M);

impl<M> Family for Single<M>
where
    M: EncodeMetric + Send + Sync + std::fmt::Debug + 'static,
{
    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn encode(&self, mut encoder: MetricEncoder<'_>, constant: &ConstantLabel) -> std::fmt::Result {
        let labels = constant.alone();
        self.0.encode(encoder.encode_family(&labels)?)
    }
}

/// The series of one family by the values of its `N` labels. A series exists from its first
/// lookup on (at 0), as the prometheus crate's vectors did, so series known up front can be
/// shown before anything happens.
pub struct MetricVec<M, const N: usize> {
    inner: Arc<VecInner<M, N>>,
}

impl<M, const N: usize> Clone for MetricVec<M, N> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

type SeriesList<M, const N: usize> = Vec<([Box<str>; N], M)>;

struct VecInner<M, const N: usize> {
    names: [Box<str>; N],
    /// The label indices in name order: the order labels are written and samples sorted in.
    order: [usize; N],
    new_metric: Box<dyn Fn() -> M + Send + Sync>,
    metric_type: MetricType,
    hasher: std::collections::hash_map::RandomState,
    /// By the hash of the label values; a lookup hashes the `&str`s it is given and compares,
    /// so finding a series allocates nothing.
    series: RwLock<HashMap<u64, SeriesList<M, N>>>,
}

impl<M, const N: usize> std::fmt::Debug for MetricVec<M, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricVec")
            .field("labels", &self.inner.names)
            .finish()
    }
}

impl<M: Clone + EncodeMetric, const N: usize> MetricVec<M, N> {
    /// A vector with these label names whose series are made by `new_metric`.
    pub fn new(labels: [&str; N], new_metric: impl Fn() -> M + Send + Sync + 'static) -> Result<Self> {
        let names = labels.map(Box::<str>::from);
        for (index, name) in names.iter().enumerate() {
            let reserved = matches!(&**name, "le" | "quantile" | "service");
            if !is_valid_name(name) || name.contains(':') || name.starts_with("__") || reserved {
                return Err(RegistrationError(format!("{name:?} is not a label name here")));
            }
            if names[..index].contains(name) {
                return Err(RegistrationError(format!("label {name:?} is given twice")));
            }
        }
        let mut order: [usize; N] = std::array::from_fn(|index| index);
        order.sort_by(|&a, &b| names[a].cmp(&names[b]));
        let metric_type = new_metric().metric_type();
        Ok(Self {
            inner: Arc::new(VecInner {
                names,
                order,
                new_metric: Box::new(new_metric),
                metric_type,
                hasher: std::collections::hash_map::RandomState::new(),
                series: RwLock::default(),
            }),
        })
    }

    fn hash(&self, values: &[&str; N]) -> u64 {
        let mut hasher = self.inner.hasher.build_hasher();
        for value in values {
            value.hash(&mut hasher);
        }
        hasher.finish()
    }

    /// The series with these label values (in the order the labels were named), made on first
    /// use.
    pub fn with_label_values(&self, values: &[&str; N]) -> M {
        let hash = self.hash(values);
        let matches = |(known, _): &&([Box<str>; N], M)| known.iter().zip(values).all(|(a, b)| **a == **b);
        {
            let series = self.inner.series.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, metric)) = series.get(&hash).and_then(|list| list.iter().find(matches)) {
                return metric.clone();
            }
        }
        let mut series = self.inner.series.write().unwrap_or_else(PoisonError::into_inner);
        let list = series.entry(hash).or_default();
        if let Some((_, metric)) = list.iter().find(matches) {
            return metric.clone();
        }
        let metric = (self.inner.new_metric)();
        list.push((values.map(Box::<str>::from), metric.clone()));
        metric
    }
}

/// One sample's labels: its own in name order, then the registry's constant label.
struct SeriesLabels<'a, const N: usize> {
    names: &'a [Box<str>; N],
    values: &'a [Box<str>; N],
    order: &'a [usize; N],
    constant: &'a ConstantLabel,
}

impl<const N: usize> EncodeLabelSet for SeriesLabels<'_, N> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        for &index in self.order {
            (&*self.names[index], &*self.values[index]).encode(encoder.encode_label())?;
        }
        self.constant.alone().encode(encoder)
    }
}

impl<M, const N: usize> Family for MetricVec<M, N>
where
    M: EncodeMetric + Clone + Send + Sync + 'static,
{
    fn metric_type(&self) -> MetricType {
        self.inner.metric_type
    }

    fn is_empty(&self) -> bool {
        self.inner
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .all(Vec::is_empty)
    }

    fn encode(&self, mut encoder: MetricEncoder<'_>, constant: &ConstantLabel) -> std::fmt::Result {
        let series = self.inner.series.read().unwrap_or_else(PoisonError::into_inner);
        let order = &self.inner.order;
        let mut sorted: Vec<&([Box<str>; N], M)> = series.values().flatten().collect();
        sorted.sort_by(|(a, _), (b, _)| order.iter().map(|&i| &a[i]).cmp(order.iter().map(|&i| &b[i])));
        for (values, metric) in sorted {
            let labels = SeriesLabels {
                names: &self.inner.names,
                values,
                order,
                constant,
            };
            metric.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn registry() -> Registry {
        Registry::with_constant_label("service", "cart")
    }

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        registry.encode_text(&mut out).unwrap();
        out
    }

    fn openmetrics(registry: &Registry) -> String {
        let mut out = String::new();
        registry.encode_openmetrics(&mut out).unwrap();
        out
    }

    #[test]
    fn the_text_format_is_the_one_the_prometheus_crate_wrote() {
        let registry = registry();
        // Registered out of order, labels named out of order: exposed sorted.
        let requests = registry
            .counter_vec(
                "http_requests_total",
                "Requests, by status.",
                ["status", "method"],
            )
            .unwrap();
        let in_flight = registry.gauge("http_requests_in_flight", "In flight.").unwrap();
        let latency = registry
            .histogram_vec(
                "http_request_duration_seconds",
                "Latency.",
                &[0.005, 1.0, 2.5],
                ["route"],
            )
            .unwrap();
        registry
            .counter_vec("unused_total", "Never used.", ["x"])
            .unwrap();
        requests.with_label_values(&["500", "GET"]).inc();
        requests.with_label_values(&["200", "POST"]).inc_by(2);
        requests.with_label_values(&["200", "GET"]).inc();
        in_flight.set(3);
        latency.with_label_values(&["/a"]).observe(0.5);
        assert_eq!(
            text(&registry),
            concat!(
                "# HELP http_request_duration_seconds Latency.\n",
                "# TYPE http_request_duration_seconds histogram\n",
                "http_request_duration_seconds_bucket{route=\"/a\",service=\"cart\",le=\"0.005\"} 0\n",
                "http_request_duration_seconds_bucket{route=\"/a\",service=\"cart\",le=\"1\"} 1\n",
                "http_request_duration_seconds_bucket{route=\"/a\",service=\"cart\",le=\"2.5\"} 1\n",
                "http_request_duration_seconds_bucket{route=\"/a\",service=\"cart\",le=\"+Inf\"} 1\n",
                "http_request_duration_seconds_sum{route=\"/a\",service=\"cart\"} 0.5\n",
                "http_request_duration_seconds_count{route=\"/a\",service=\"cart\"} 1\n",
                "# HELP http_requests_in_flight In flight.\n",
                "# TYPE http_requests_in_flight gauge\n",
                "http_requests_in_flight{service=\"cart\"} 3\n",
                "# HELP http_requests_total Requests, by status.\n",
                "# TYPE http_requests_total counter\n",
                "http_requests_total{method=\"GET\",status=\"200\",service=\"cart\"} 1\n",
                "http_requests_total{method=\"GET\",status=\"500\",service=\"cart\"} 1\n",
                "http_requests_total{method=\"POST\",status=\"200\",service=\"cart\"} 2\n",
            )
        );
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_declares_units() {
        let registry = registry();
        registry
            .counter_vec("http_requests_total", "Requests.", ["status"])
            .unwrap()
            .with_label_values(&["200"])
            .inc();
        registry
            .gauge("process_resident_memory_bytes", "Resident.")
            .unwrap()
            .set(7);
        assert_eq!(
            openmetrics(&registry),
            concat!(
                "# HELP http_requests Requests.\n",
                "# TYPE http_requests counter\n",
                "http_requests_total{status=\"200\",service=\"cart\"} 1\n",
                "# HELP process_resident_memory_bytes Resident.\n",
                "# TYPE process_resident_memory_bytes gauge\n",
                "# UNIT process_resident_memory_bytes bytes\n",
                "process_resident_memory_bytes{service=\"cart\"} 7\n",
                "# EOF\n",
            )
        );
    }

    #[test]
    fn a_series_is_found_again_whatever_the_lookup_and_values_are_escaped() {
        let registry = registry();
        let vec = registry.counter_vec("t_total", "Test.", ["a", "b"]).unwrap();
        for _ in 0..3 {
            vec.with_label_values(&["x", "y"]).inc();
        }
        vec.with_label_values(&["x", "\"quoted\"\n"]).inc();
        assert_eq!(vec.with_label_values(&["x", "y"]).get(), 3);
        let out = text(&registry);
        assert!(
            out.contains("t_total{a=\"x\",b=\"\\\"quoted\\\"\\n\",service=\"cart\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_total{a=\"x\",b=\"y\",service=\"cart\"} 3\n"),
            "{out}"
        );
    }

    #[test]
    fn bad_names_and_twice_registered_families_are_refused() {
        let registry = registry();
        registry.counter("a_total", "A.").unwrap();
        assert!(registry.counter("a_total", "A again.").is_err());
        assert!(registry.counter("a_count", "Not _total.").is_err());
        assert!(registry.gauge("1a", "Bad.").is_err());
        assert!(registry.counter_vec("b_total", "B.", ["le"]).is_err());
        assert!(registry.counter_vec("c_total", "C.", ["x", "x"]).is_err());
        assert!(registry.counter_vec("d_total", "D.", ["service"]).is_err());
    }
}
