//! The game day's report: a JSON file and a self-contained HTML page (inline SVG plots, no
//! script, nothing loaded from another host) with the same data.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::checks::Check;
use crate::requests::{Second, Window};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub timeline: String,
    /// Local wall-clock time the load began.
    pub started_at: String,
    pub duration_s: f64,
    pub shoppers: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: Vec<Second>,
    pub events: Vec<EventReport>,
    pub checks: Vec<Check>,
    /// Every check passed.
    pub passed: bool,
    /// The load test's own reports (Goose's HTML, the summary JSON, the request log).
    pub load_test_files: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventReport {
    /// The timeline file's line.
    pub line: usize,
    /// The statement as written, e.g. `kill redis-master`.
    pub statement: String,
    /// When it was due and when it happened, seconds since the load began.
    pub due_s: f64,
    pub fired_s: Option<f64>,
    /// What it did (the process killed, the admin calls made), or why it failed.
    pub outcome: String,
    pub applied: bool,
    /// First error after it → last error attributable to it; `None`: no errors.
    pub window: Option<Window>,
}

/// A game day passes when every invariant held and every event of its timeline was applied
/// (a run that skipped a fault proved nothing about it).
pub fn verdict(checks: &[Check], events: &[EventReport]) -> bool {
    checks.iter().all(|check| check.passed) && events.iter().all(|event| event.applied)
}

impl Report {
    pub fn write(&self, json: &Path, html: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self).context("the report as JSON")?;
        std::fs::write(json, text).with_context(|| format!("writing {}", json.display()))?;
        std::fs::write(html, self.html()).with_context(|| format!("writing {}", html.display()))?;
        Ok(())
    }

    pub fn html(&self) -> String {
        let mut page = String::new();
        let verdict = if self.passed { "passed" } else { "FAILED" };
        let _ = write!(
            page,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>ShopStack game day {}: {verdict}</title>\n<style>{STYLE}</style></head><body>\n\
             <h1>ShopStack game day: <span class=\"{}\">{verdict}</span></h1>\n\
             <p>Timeline <code>{}</code>, load began {}, {:.0} s, {} shoppers: {} requests, {} errors \
             (a 5xx or no answer).</p>\n",
            escape(&self.started_at),
            if self.passed { "pass" } else { "fail" },
            escape(&self.timeline),
            escape(&self.started_at),
            self.duration_s,
            self.shoppers,
            self.requests,
            self.errors,
        );
        page.push_str("<h2>Over time</h2>\n");
        let markers: Vec<(f64, String)> = self
            .events
            .iter()
            .enumerate()
            .filter_map(|(index, event)| {
                event
                    .fired_s
                    .map(|at| (at, format!("{} {}", index + 1, event.statement)))
            })
            .collect();
        let series = |value: fn(&Second) -> Option<f64>| -> Vec<(f64, f64)> {
            self.seconds
                .iter()
                .filter_map(|second| value(second).map(|y| (second.second as f64 + 0.5, y)))
                .collect()
        };
        for (id, title, color, points) in [
            (
                "requests",
                "requests per second",
                "#2563eb",
                series(|second| Some(second.requests as f64)),
            ),
            (
                "errors",
                "errors per second (5xx or no answer)",
                "#dc2626",
                series(|second| Some(second.errors as f64)),
            ),
            (
                "p99",
                "p99 response time (ms) of the second's requests",
                "#7c3aed",
                series(|second| second.p99_ms.map(|ms| ms as f64)),
            ),
        ] {
            page.push_str(&plot(id, title, color, &points, self.duration_s, &markers));
        }

        page.push_str(
            "<h2>Faults and failover windows</h2>\n<p>A fault's window runs from the first error \
             sent after it (from half a second before: requests in flight) to the end of the last \
             error sent before the next fault's window begins; each error counts for one fault.</p>\n<table class=\"faults\"><colgroup><col style=\"width:3%\"><col style=\"width:5%\">\
             <col style=\"width:24%\"><col style=\"width:7%\"><col style=\"width:7%\">\
             <col style=\"width:34%\"><col style=\"width:20%\"></colgroup><tr><th>#</th><th>line</th>\
             <th>statement</th><th>due</th><th>at</th><th>what happened</th><th>failover window</th></tr>\n",
        );
        for (index, event) in self.events.iter().enumerate() {
            let window = match &event.window {
                Some(window) => format!(
                    "{:.2} s: {} errors from {:.2} s to {:.2} s",
                    window.length_s, window.errors, window.first_error_s, window.last_error_s
                ),
                None => "no errors".to_owned(),
            };
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{:.1} s</td><td>{}</td>\
                 <td class=\"{}\">{}</td><td>{}</td></tr>",
                index + 1,
                event.line,
                escape(&event.statement),
                event.due_s,
                event
                    .fired_s
                    .map_or("not fired".to_owned(), |at| format!("{at:.2} s")),
                if event.applied { "" } else { "fail" },
                escape(&event.outcome),
                escape(&window),
            );
        }
        page.push_str("</table>\n<h2>Invariants</h2>\n<ul class=\"checks\">\n");
        for check in &self.checks {
            let _ = write!(
                page,
                "<li><span class=\"{}\">{}</span> {} <small>({})</small>",
                if check.passed { "pass" } else { "fail" },
                if check.passed { "passed" } else { "FAILED" },
                escape(&check.name),
                escape(&check.detail),
            );
            if !check.items.is_empty() {
                let failed = check.items.iter().filter(|item| !item.passed).count();
                let _ = write!(
                    page,
                    "<details{}><summary>{} items, {failed} failed</summary><table>",
                    if failed > 0 { " open" } else { "" },
                    check.items.len()
                );
                for item in &check.items {
                    let _ = write!(
                        page,
                        "<tr><td class=\"{}\">{}</td><td><code>{}</code></td><td>{}</td></tr>",
                        if item.passed { "pass" } else { "fail" },
                        if item.passed { "passed" } else { "FAILED" },
                        escape(&item.name),
                        escape(&item.detail)
                    );
                }
                page.push_str("</table></details>");
            }
            page.push_str("</li>\n");
        }
        page.push_str("</ul>\n");
        if !self.load_test_files.is_empty() {
            page.push_str("<h2>The load test's own reports</h2>\n<ul>\n");
            for file in &self.load_test_files {
                let _ = writeln!(page, "<li><code>{}</code></li>", escape(file));
            }
            page.push_str("</ul>\n");
        }
        page.push_str("</body></html>\n");
        page
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#111}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;\
text-align:left;vertical-align:top;font-size:.9em;overflow-wrap:anywhere}\
table.faults{width:100%;table-layout:fixed}.pass{color:#15803d;font-weight:600}\
.fail{color:#b91c1c;font-weight:600}svg{display:block;margin:.5em 0 1.5em}\
.checks li{margin:.4em 0}code{font-size:.95em}";

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 30.0;
/// Characters of a fault's statement shown beside its line on a plot.
const MARKER_LABEL: usize = 28;

/// One plot as inline SVG: the series as a line, the y axis from 0 to the largest value, the
/// x axis the load's seconds, each event a dashed vertical line with its number and statement.
fn plot(
    id: &str,
    title: &str,
    color: &str,
    points: &[(f64, f64)],
    duration_s: f64,
    markers: &[(f64, String)],
) -> String {
    let span = duration_s.max(1.0);
    let top_value = points.iter().map(|(_, y)| *y).fold(0.0_f64, f64::max).max(1.0);
    let x = |seconds: f64| LEFT + (seconds / span).clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT);
    let y = |value: f64| HEIGHT - BOTTOM - (value / top_value) * (HEIGHT - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg id=\"plot-{id}\" class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">\
         <text x=\"{LEFT}\" y=\"16\" font-size=\"14\" font-weight=\"600\">{}</text>",
        escape(title),
        escape(title)
    );
    // Axes, with the top value and a tick every 10 s.
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"#555\"/>\
         <line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#555\"/>\
         <text x=\"{lx}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"end\">{top}</text>\
         <text x=\"{lx}\" y=\"{b}\" font-size=\"11\" text-anchor=\"end\">0</text>",
        b = HEIGHT - BOTTOM,
        r = WIDTH - RIGHT,
        lx = LEFT - 6.0,
        ty = TOP + 4.0,
        top = format_value(top_value),
    );
    let mut tick = 0.0;
    while tick <= span {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{tick:.0} s</text>",
            x(tick),
            HEIGHT - BOTTOM + 16.0
        );
        tick += 10.0;
    }
    let line: Vec<String> = points
        .iter()
        .map(|(seconds, value)| format!("{:.1},{:.1}", x(*seconds), y(*value)))
        .collect();
    let _ = write!(
        svg,
        "<polyline class=\"series\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
        line.join(" ")
    );
    for (index, (at, label)) in markers.iter().enumerate() {
        let marker_x = x(*at);
        // Labels take turns on three rows so neighbours do not overlap.
        let label_y = TOP + 10.0 + (index % 3) as f64 * 12.0;
        // Long statements are cut on the plot; the whole one is the marker's tooltip.
        let short: String = if label.chars().count() > MARKER_LABEL {
            label.chars().take(MARKER_LABEL - 1).chain(['…']).collect()
        } else {
            label.clone()
        };
        let _ = write!(
            svg,
            "<g class=\"fault-marker\"><title>{}</title><line x1=\"{marker_x:.1}\" y1=\"{TOP}\" x2=\"{marker_x:.1}\" y2=\"{:.1}\" \
             stroke=\"#f59e0b\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{:.1}\" y=\"{label_y:.1}\" font-size=\"10\" fill=\"#92400e\">{}</text></g>",
            escape(label),
            HEIGHT - BOTTOM,
            marker_x + 3.0,
            escape(&short)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Text for HTML and SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CheckItem;

    fn report(passed: bool) -> Report {
        Report {
            timeline: "t.txt".to_owned(),
            started_at: "2026-01-01 10:00:00".to_owned(),
            duration_s: 20.0,
            shoppers: 3,
            requests: 30,
            errors: 2,
            seconds: (0..20)
                .map(|second| Second {
                    second,
                    requests: 10,
                    errors: u64::from(second == 5),
                    p99_ms: Some(40),
                })
                .collect(),
            events: vec![EventReport {
                line: 3,
                statement: "kill redis-master".to_owned(),
                due_s: 5.0,
                fired_s: Some(5.01),
                outcome: "SIGKILL Redis node redis://127.0.0.1:1".to_owned(),
                applied: true,
                window: None,
            }],
            checks: vec![Check {
                name: "stock <&>".to_owned(),
                passed,
                detail: "1 product".to_owned(),
                items: vec![CheckItem {
                    name: "p1".to_owned(),
                    passed,
                    detail: "free 1 + held 0 + sold 0 = 1 (initial 1)".to_owned(),
                }],
            }],
            passed,
            load_test_files: Vec::new(),
        }
    }

    #[test]
    fn the_page_has_three_plots_with_the_fault_marked_and_the_checks() {
        let html = report(true).html();
        assert_eq!(html.matches("<svg ").count(), 3);
        assert_eq!(html.matches("class=\"fault-marker\"").count(), 3);
        assert!(html.contains("1 kill redis-master"));
        assert!(html.contains("no errors"));
        assert!(html.contains("stock &lt;&amp;&gt;"));
        // Self-contained: nothing is loaded, from another host or this one.
        assert!(!html.contains("src=") && !html.contains("href=") && !html.contains("<script"));
    }

    #[test]
    fn a_broken_invariant_fails_the_run_and_shows_failed() {
        let broken = report(false);
        assert!(!verdict(&broken.checks, &broken.events));
        assert!(verdict(&report(true).checks, &report(true).events));
        let html = broken.html();
        assert!(html.contains("ShopStack game day: <span class=\"fail\">FAILED</span>"));
        assert!(html.contains("<details open>"));
    }
}
