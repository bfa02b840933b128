//! The queries in the Grafana dashboards, ready to send to a data source.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// What Grafana's built-in interval variables become in the tests: windows that hold several
/// samples at a 1 s scrape interval once the stack has run for a few seconds.
pub const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "5m"),
    ("__auto", "1m"),
];

/// One dashboard file.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub file: String,
    pub uid: String,
    pub title: String,
    pub json: Value,
}

/// Which data source a query goes to, by the uid the provisioning gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    pub kind: String,
    pub uid: String,
}

/// One query of one panel (or of a template variable).
#[derive(Debug, Clone)]
pub struct Query {
    pub dashboard: String,
    /// The panel title, or `variable <name>` for a template variable's query.
    pub panel: String,
    pub ref_id: String,
    pub datasource: DataSource,
    /// The query as written in the dashboard.
    pub raw: String,
    /// With the template variables substituted.
    pub expr: String,
}

impl Query {
    /// `dashboard / panel / refId`, for messages.
    pub fn name(&self) -> String {
        format!("{} / {} / {}", self.dashboard, self.panel, self.ref_id)
    }
}

/// Every `*.json` dashboard in `dir`, sorted by file name.
pub fn load_all(dir: &Path) -> anyhow::Result<Vec<Dashboard>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let json: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            let field = |name: &str| {
                json.get(name)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .with_context(|| format!("{} has no {name}", path.display()))
            };
            Ok(Dashboard {
                file: path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                uid: field("uid")?,
                title: field("title")?,
                json: json.clone(),
            })
        })
        .collect()
}

impl Dashboard {
    /// Every panel, including those nested in collapsed rows.
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a [Value], out: &mut Vec<&'a Value>) {
            for panel in panels {
                out.push(panel);
                if let Some(nested) = panel.get("panels").and_then(Value::as_array) {
                    walk(nested, out);
                }
            }
        }
        let mut out = Vec::new();
        if let Some(panels) = self.json.get("panels").and_then(Value::as_array) {
            walk(panels, &mut out);
        }
        out
    }

    /// The template variables as Grafana resolves them for the default selection: "All"
    /// becomes the variable's `allValue`, a constant its value, others their current value.
    pub fn variable_values(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut values = BTreeMap::new();
        let list = self
            .json
            .pointer("/templating/list")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for variable in list {
            let name = variable
                .get("name")
                .and_then(Value::as_str)
                .with_context(|| format!("{}: a variable without a name", self.uid))?
                .to_owned();
            let kind = variable.get("type").and_then(Value::as_str).unwrap_or("");
            let current = variable.pointer("/current/value");
            let current_text = match current {
                Some(Value::Array(items)) => items.first().and_then(Value::as_str),
                Some(Value::String(text)) => Some(text.as_str()),
                _ => None,
            };
            let value = if kind == "constant" {
                variable
                    .get("query")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            } else if current_text == Some("$__all") {
                match variable.get("allValue").and_then(Value::as_str) {
                    Some(all) => all.to_owned(),
                    None => bail!(
                        "{}: variable {name} selects All but has no allValue (Grafana would send a list of every value)",
                        self.uid
                    ),
                }
            } else {
                current_text.unwrap_or_default().to_owned()
            };
            values.insert(name, value);
        }
        Ok(values)
    }

    /// Every query of every panel and template variable, substituted.
    pub fn queries(&self) -> anyhow::Result<Vec<Query>> {
        let variables = self.variable_values()?;
        let mut queries = Vec::new();
        for panel in self.panels() {
            let title = panel
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("(untitled)")
                .to_owned();
            let panel_source = panel.get("datasource").and_then(datasource_of);
            for target in panel
                .get("targets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(datasource) = target
                    .get("datasource")
                    .and_then(datasource_of)
                    .or_else(|| panel_source.clone())
                else {
                    bail!("{} / {title}: a target without a data source", self.uid);
                };
                let raw = target
                    .get("expr")
                    .or_else(|| target.get("query"))
                    .and_then(Value::as_str)
                    .with_context(|| format!("{} / {title}: a target without a query", self.uid))?
                    .to_owned();
                queries.push(Query {
                    dashboard: self.uid.clone(),
                    panel: title.clone(),
                    ref_id: target
                        .get("refId")
                        .and_then(Value::as_str)
                        .unwrap_or("A")
                        .to_owned(),
                    expr: substitute(&raw, &variables),
                    raw,
                    datasource,
                });
            }
        }
        for variable in self
            .json
            .pointer("/templating/list")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if variable.get("type").and_then(Value::as_str) != Some("query") {
                continue;
            }
            let name = variable.get("name").and_then(Value::as_str).unwrap_or_default();
            let datasource = variable
                .get("datasource")
                .and_then(datasource_of)
                .with_context(|| format!("{}: variable {name} without a data source", self.uid))?;
            let raw = match variable.get("query") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Object(object)) => object
                    .get("query")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                _ => bail!("{}: variable {name} without a query", self.uid),
            };
            queries.push(Query {
                dashboard: self.uid.clone(),
                panel: format!("variable {name}"),
                ref_id: "var".into(),
                expr: substitute(&raw, &variables),
                raw,
                datasource,
            });
        }
        Ok(queries)
    }
}

fn datasource_of(value: &Value) -> Option<DataSource> {
    Some(DataSource {
        kind: value.get("type")?.as_str()?.to_owned(),
        uid: value.get("uid")?.as_str()?.to_owned(),
    })
}

/// Replace `$name`, `${name}` and `${name:format}` for the given variables and Grafana's
/// built-in intervals. Anything else (e.g. label_replace's `${1}`) is left alone.
pub fn substitute(query: &str, variables: &BTreeMap<String, String>) -> String {
    let lookup = |name: &str| -> Option<String> {
        variables.get(name).cloned().or_else(|| {
            BUILTINS
                .iter()
                .find(|(builtin, _)| *builtin == name)
                .map(|(_, value)| (*value).to_owned())
        })
    };
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(position) = rest.find('$') {
        out.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        if let Some(braced) = after.strip_prefix('{')
            && let Some(end) = braced.find('}')
        {
            let inner = &braced[..end];
            let name = inner.split(':').next().unwrap_or_default();
            if let Some(value) = lookup(name) {
                out.push_str(&value);
                rest = &braced[end + 1..];
                continue;
            }
        } else {
            let length = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if let Some(value) = lookup(&after[..length]) {
                out.push_str(&value);
                rest = &after[length..];
                continue;
            }
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `label_values(selector, label)` → (selector, label); `None` for other variable queries.
pub fn parse_label_values(query: &str) -> Option<(String, String)> {
    let inner = query.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim().to_owned(), label.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_handles_every_form_and_leaves_capture_groups() {
        let variables = BTreeMap::from([
            ("service".to_owned(), ".*".to_owned()),
            ("probes".to_owned(), "/metrics|/livez".to_owned()),
        ]);
        assert_eq!(
            substitute(
                r#"rate(x{service=~"$service", route!~"${probes}|/stress"}[$__rate_interval])"#,
                &variables
            ),
            r#"rate(x{service=~".*", route!~"/metrics|/livez|/stress"}[1m])"#
        );
        assert_eq!(
            substitute(
                r#"label_replace(x, "class", "${1}xx", "status", "(.).*")"#,
                &variables
            ),
            r#"label_replace(x, "class", "${1}xx", "status", "(.).*")"#
        );
        assert_eq!(substitute("${service:regex} $unknown", &variables), ".* $unknown");
    }

    #[test]
    fn label_values_queries_parse() {
        assert_eq!(
            parse_label_values(r#"label_values(http_requests_total{service=~".*"}, route)"#),
            Some((
                r#"http_requests_total{service=~".*"}"#.to_owned(),
                "route".to_owned()
            ))
        );
        assert_eq!(parse_label_values("up"), None);
    }
}
