//! The `process_*` metrics, read from `/proc/self` (through `procfs`) at each scrape, with the
//! names, types and help texts Prometheus client libraries give them. `prometheus-client` has
//! no process collector of its own (docs/decisions/0005-prometheus-client.md).

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use shopstack_base::metrics::{Collector, ConstantLabel, Registry, Result, split_name};

/// What `/proc/self` says at one scrape; a value it could not read is left out.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: Option<f64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
    virtual_memory_bytes: Option<i64>,
    resident_memory_bytes: Option<i64>,
    threads: Option<i64>,
}

impl Sample {
    fn read() -> Self {
        let Ok(process) = procfs::process::Process::myself() else {
            return Self::default();
        };
        let mut sample = Self {
            open_fds: process
                .fd_count()
                .ok()
                .and_then(|count| i64::try_from(count).ok()),
            max_fds: process
                .limits()
                .ok()
                .and_then(|limits| match limits.max_open_files.soft_limit {
                    procfs::process::LimitValue::Value(max) => i64::try_from(max).ok(),
                    procfs::process::LimitValue::Unlimited => None,
                }),
            ..Self::default()
        };
        if let Ok(stat) = process.stat() {
            let ticks = procfs::ticks_per_second().max(1) as f64;
            sample.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
            sample.virtual_memory_bytes = i64::try_from(stat.vsize).ok();
            sample.resident_memory_bytes = i64::try_from(stat.rss.saturating_mul(procfs::page_size())).ok();
            sample.threads = Some(stat.num_threads);
        }
        sample
    }
}

/// When this process started, in seconds since the Unix epoch (it does not change).
fn start_time_seconds() -> Option<i64> {
    let boot = procfs::boot_time_secs().ok()?;
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second().max(1);
    i64::try_from(boot + stat.starttime / ticks).ok()
}

#[derive(Debug)]
struct ProcessCollector {
    start_time_seconds: Option<i64>,
}

/// Write one sample family: its header and its one sample, labelled with the constant label.
fn write(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
    constant: &ConstantLabel,
) -> std::fmt::Result {
    let (base, unit) = split_name(name, metric.metric_type()).map_err(|_| std::fmt::Error)?;
    let mut family = encoder.encode_descriptor(&base, help, unit.as_ref(), metric.metric_type())?;
    let labels = constant.alone();
    metric.encode(family.encode_family(&labels)?)
}

impl Collector for ProcessCollector {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>, constant: &ConstantLabel) -> std::fmt::Result {
        let sample = Sample::read();
        // In name order, as every other family is written.
        if let Some(seconds) = sample.cpu_seconds {
            let help = "Total user and system CPU time spent in seconds.";
            write(
                encoder,
                "process_cpu_seconds_total",
                help,
                &ConstCounter::new(seconds),
                constant,
            )?;
        }
        let gauges = [
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                sample.max_fds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                sample.open_fds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                sample.resident_memory_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                self.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                sample.threads,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                sample.virtual_memory_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                write(encoder, name, help, &ConstGauge::new(value), constant)?;
            }
        }
        Ok(())
    }
}

/// Add the `process_*` families to `registry`.
pub fn register(registry: &Registry) -> Result<()> {
    registry.register_collector(
        "process_",
        ProcessCollector {
            start_time_seconds: start_time_seconds(),
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_process_metric_is_exposed_with_the_prometheus_client_libraries_names() {
        let registry = Registry::with_constant_label("service", "cart");
        register(&registry).unwrap();
        let mut text = String::new();
        registry.encode_text(&mut text).unwrap();
        let headers: Vec<&str> = text.lines().filter(|line| line.starts_with("# TYPE")).collect();
        assert_eq!(
            headers,
            [
                "# TYPE process_cpu_seconds_total counter",
                "# TYPE process_max_fds gauge",
                "# TYPE process_open_fds gauge",
                "# TYPE process_resident_memory_bytes gauge",
                "# TYPE process_start_time_seconds gauge",
                "# TYPE process_threads gauge",
                "# TYPE process_virtual_memory_bytes gauge",
            ]
        );
        let value = |name: &str| -> f64 {
            let prefix = format!("{name}{{service=\"cart\"}} ");
            let line = text.lines().find(|line| line.starts_with(&prefix)).unwrap();
            line[prefix.len()..].parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0, "stdin, stdout, stderr at least");
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(started <= now && started > now - 86_400.0, "{started} vs {now}");

        let mut openmetrics = String::new();
        registry.encode_openmetrics(&mut openmetrics).unwrap();
        assert!(
            openmetrics.contains("# TYPE process_cpu_seconds counter\n# UNIT process_cpu_seconds seconds\n")
        );
        assert!(openmetrics.contains("\nprocess_cpu_seconds_total{service=\"cart\"} "));
    }
}
