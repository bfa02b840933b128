//! `docs/configuration.md` is generated from the binaries' own clap definitions, and nothing a
//! binary reads from its environment is missing from it.
//!
//! The tables between `<!-- generated:NAME:start -->` and `<!-- generated:NAME:end -->` are
//! rebuilt here from `clap::CommandFactory::command()` of each binary's config type; the prose
//! around them is hand-written. When a flag, its help or its default changes, rewrite the
//! tables with
//!
//! ```text
//! UPDATE_DOCS=1 cargo test -p stack-tests --test configuration
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{Arg, Args, Command, CommandFactory};
use shopstack_base::config::{CommonConfig, ServiceDefaults};
use stack_tests::repo_root;

const UPDATE_COMMAND: &str = "UPDATE_DOCS=1 cargo test -p stack-tests --test configuration";

fn doc_path() -> PathBuf {
    repo_root().join("docs").join("configuration.md")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The settings every service flattens into its own parser.
fn common_command() -> Command {
    CommonConfig::augment_args(Command::new("common"))
}

/// Each service binary: its name, its parser, its built-in defaults.
fn services() -> Vec<(&'static str, Command, ServiceDefaults)> {
    vec![
        ("gateway", gateway::GatewayConfig::command(), gateway::DEFAULTS),
        ("catalog", catalog::CatalogConfig::command(), catalog::DEFAULTS),
        ("cart", cart::CartConfig::command(), cart::DEFAULTS),
        ("orders", orders::OrdersConfig::command(), orders::DEFAULTS),
    ]
}

/// Every binary's parser, the load test's included.
fn binaries() -> Vec<(&'static str, Command)> {
    let mut all: Vec<_> = services()
        .into_iter()
        .map(|(name, command, _)| (name, command))
        .collect();
    all.push(("loadtest", loadtest::cli::command()));
    all
}

/// The arguments a reader sets: not clap's own `--help`/`--version`, not hidden ones.
fn visible_arguments(command: &Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version"))
}

fn ids(command: &Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect()
}

/// One line of table text: paragraphs and wrapped lines joined, pipes escaped, and `<`, `>`
/// outside code spans written as entities so Markdown does not take them for HTML.
fn cell(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(joined.len());
    let mut in_code = false;
    for c in joined.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            '>' if !in_code => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// `text` without a trailing `[default: …]` note, and the note's content.
fn split_default_note(text: &str) -> (String, Option<String>) {
    if let Some(start) = text.find("[default: ")
        && let Some(length) = text[start..].find(']')
    {
        let note = text[start + "[default: ".len()..start + length].trim().to_owned();
        let rest = format!("{} {}", &text[..start], &text[start + length + 1..]);
        let rest = cell(&rest);
        let rest = rest.replace(" .", ".").replace(" ,", ",");
        return (rest, Some(note));
    }
    (cell(text), None)
}

fn row(arg: &Arg) -> String {
    let variable = arg
        .get_env()
        .map_or_else(|| "—".to_owned(), |env| format!("`{}`", env.to_string_lossy()));
    let mut flags = Vec::new();
    if let Some(short) = arg.get_short() {
        flags.push(format!("`-{short}`"));
    }
    if let Some(long) = arg.get_long() {
        flags.push(format!("`--{long}`"));
    }
    let flag = if flags.is_empty() {
        "—".to_owned()
    } else {
        flags.join(", ")
    };
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    let (mut meaning, note) = split_default_note(&help);
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    let default = if arg.is_required_set() {
        "required".to_owned()
    } else if defaults == [env!("CARGO_PKG_VERSION")] {
        // The workspace's version: named, not quoted, so a release does not stale the page.
        "the package version".to_owned()
    } else if !defaults.is_empty() && !arg.is_hide_default_value_set() {
        format!("`{}`", defaults.join(","))
    } else if let Some(note) = note {
        cell(&note)
    } else {
        "—".to_owned()
    };
    if arg.get_action().takes_values() {
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|value| !value.is_hide_set())
            .map(|value| format!("`{}`", value.get_name()))
            .collect();
        // `true`/`false` alone come from a boolean parser, which takes yes/no, on/off and 1/0 too.
        if !possible.is_empty() && possible != ["`true`", "`false`"] {
            let sentence = if meaning.is_empty() || meaning.ends_with('.') {
                meaning
            } else {
                format!("{meaning}.")
            };
            meaning = format!("{sentence} One of {}.", possible.join(", "))
                .trim()
                .to_owned();
        }
    }
    format!("| {variable} | {flag} | {default} | {meaning} |\n")
}

fn table<'a>(args: impl IntoIterator<Item = &'a Arg>) -> String {
    let mut text = String::from("| variable | flag | default | meaning |\n|---|---|---|---|\n");
    for arg in args {
        text.push_str(&row(arg));
    }
    text
}

/// What each service uses when `PORT`, `SERVICE_NAME` and the `SIM_*` variables are unset.
fn service_defaults_table() -> String {
    let mut text = String::from(
        "| service | `PORT` | `SERVICE_NAME` | `SIM_APPLIES_TO` | `SIM_LATENCY_MS` | `SIM_LATENCY_RATE` | `SIM_FAILURE_RATE` | `SIM_FAILURE_STATUS` | `SIM_HEADER_FAULTS` |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, _, defaults) in services() {
        let sim = &defaults.simulation;
        let latency = if sim.latency_min_ms == sim.latency_max_ms {
            sim.latency_min_ms.to_string()
        } else {
            format!("{}-{}", sim.latency_min_ms, sim.latency_max_ms)
        };
        let applies_to = format!("{:?}", sim.applies_to).to_lowercase();
        text.push_str(&format!(
            "| {name} | `{}` | `{}` | `{applies_to}` | `{latency}` | `{}` | `{}` | `{}` | `{}` |\n",
            defaults.port,
            defaults.name,
            sim.latency_rate,
            sim.failure_rate,
            sim.failure_status,
            sim.header_faults,
        ));
    }
    text
}

/// Every generated section of the page, by marker name.
fn generated_sections() -> BTreeMap<String, String> {
    let common = common_command();
    let common_ids = ids(&common);
    let mut sections = BTreeMap::new();
    sections.insert("common".to_owned(), table(visible_arguments(&common)));
    sections.insert("service-defaults".to_owned(), service_defaults_table());
    for (name, command, _) in services() {
        let own = visible_arguments(&command).filter(|arg| !common_ids.contains(arg.get_id().as_str()));
        sections.insert(name.to_owned(), table(own));
        for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            sections.insert(
                format!("{name}-{}", sub.get_name()),
                table(visible_arguments(sub)),
            );
        }
    }
    // The load test: ShopStack's own options, and any Goose option read from a variable. Goose's
    // other flags are listed by `loadtest --help`.
    let shop_ids = ids(&loadtest::cli::ShopOptions::augment_args(Command::new("shop")));
    let command = loadtest::cli::command();
    let loadtest = visible_arguments(&command)
        .filter(|arg| shop_ids.contains(arg.get_id().as_str()) || arg.get_env().is_some());
    sections.insert("loadtest".to_owned(), table(loadtest));
    sections
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- generated:{name}:start -->"),
        format!("<!-- generated:{name}:end -->"),
    )
}

/// The page with every generated section replaced; the names of the sections that differed.
fn regenerate(page: &str, sections: &BTreeMap<String, String>) -> (String, Vec<String>) {
    let mut page = page.to_owned();
    let mut changed = Vec::new();
    for (name, table) in sections {
        let (start, end) = markers(name);
        let begin = page
            .find(&start)
            .unwrap_or_else(|| panic!("docs/configuration.md has no `{start}` marker; add `{start}` and `{end}` where the table belongs"))
            + start.len();
        let finish = begin
            + page[begin..]
                .find(&end)
                .unwrap_or_else(|| panic!("docs/configuration.md: `{start}` without `{end}`"));
        let body = format!("\n\n{table}\n");
        if page[begin..finish] != body {
            changed.push(name.clone());
            page.replace_range(begin..finish, &body);
        }
    }
    (page, changed)
}

/// The lines one text has and the other lacks, `-` for the page, `+` for the definitions.
fn line_diff(old: &str, new: &str) -> String {
    let old_lines: BTreeSet<&str> = old.lines().collect();
    let new_lines: BTreeSet<&str> = new.lines().collect();
    let mut text = String::new();
    for line in old.lines().filter(|line| !new_lines.contains(line)) {
        text.push_str(&format!("  - {line}\n"));
    }
    for line in new.lines().filter(|line| !old_lines.contains(line)) {
        text.push_str(&format!("  + {line}\n"));
    }
    text
}

#[test]
fn the_generated_tables_match_the_clap_definitions() {
    let path = doc_path();
    let page = read(&path);
    let (updated, changed) = regenerate(&page, &generated_sections());
    if changed.is_empty() {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        // Written beside and renamed over, so the other tests never read a half-written page.
        let partial = path.with_extension("md.partial");
        std::fs::write(&partial, &updated)
            .and_then(|()| std::fs::rename(&partial, &path))
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        eprintln!(
            "rewrote the generated sections of docs/configuration.md: {}",
            changed.join(", ")
        );
        return;
    }
    let mut message = format!(
        "docs/configuration.md is out of date with the binaries' clap definitions (sections: {}).\n\
         Lines that differ (- in the page, + generated):\n",
        changed.join(", ")
    );
    message.push_str(&line_diff(&page, &updated));
    message.push_str(&format!(
        "Rewrite the generated sections with:\n    {UPDATE_COMMAND}\nthen review the prose around them.\n"
    ));
    panic!("{message}");
}

#[test]
fn every_service_flattens_the_shared_settings() {
    let common = common_command();
    for (name, command, _) in services() {
        for arg in visible_arguments(&common) {
            let same = command.get_arguments().find(|own| own.get_id() == arg.get_id());
            assert!(
                same.is_some_and(|own| own.get_env() == arg.get_env() && own.get_long() == arg.get_long()),
                "{name} does not take the shared setting {:?} as the \"every service\" table says",
                arg.get_id()
            );
        }
    }
}

fn all_env_names(command: &Command, names: &mut BTreeSet<String>) {
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env() {
            names.insert(env.to_string_lossy().into_owned());
        }
    }
    for sub in command.get_subcommands() {
        all_env_names(sub, names);
    }
}

#[test]
fn every_clap_variable_of_every_binary_is_documented() {
    let page = read(&doc_path());
    let mut missing = Vec::new();
    for (binary, command) in binaries() {
        let mut names = BTreeSet::new();
        all_env_names(&command, &mut names);
        assert!(!names.is_empty(), "{binary} reads no variable?");
        for name in names {
            if !page.contains(&format!("`{name}`")) {
                missing.push(format!("{binary}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?} ({UPDATE_COMMAND})"
    );
}

/// Every `.rs` file under the `src/` of each crate of the workspace.
fn source_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    let root = repo_root();
    let mut crates = Vec::new();
    for group in ["common", "apps", "ops"] {
        for entry in std::fs::read_dir(root.join(group)).unwrap().flatten() {
            if entry.path().join("Cargo.toml").is_file() {
                crates.push(entry.path());
            }
        }
    }
    let mut files = Vec::new();
    for krate in crates {
        walk(&krate.join("src"), &mut files);
    }
    files.sort();
    files
}

/// The variables `source` reads with `env::var("NAME")` or `env::var_os("NAME")`, the name
/// written as a literal or as a `const NAME: &str = "…"` of the same file; unit tests
/// (`#[cfg(test)] mod tests`) left out. Names it cannot resolve are returned as errors.
fn variables_read(source: &str) -> (BTreeSet<String>, Vec<String>) {
    let code = source
        .find("#[cfg(test)]\nmod tests")
        .map_or(source, |end| &source[..end]);
    let mut names = BTreeSet::new();
    let mut unresolved = Vec::new();
    for (at, _) in code.match_indices("env::var") {
        let rest = &code[at + "env::var".len()..];
        let rest = rest.strip_prefix("_os").unwrap_or(rest);
        let Some(rest) = rest.trim_start().strip_prefix('(') else {
            continue; // `env::vars()`, or an import
        };
        let argument = rest.trim_start();
        if let Some(literal) = argument.strip_prefix('"') {
            if let Some(end) = literal.find('"') {
                names.insert(literal[..end].to_owned());
            }
            continue;
        }
        let ident: String = argument
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let declaration = format!("const {ident}: &str = \"");
        match source.find(&declaration) {
            Some(start) => {
                let value = &source[start + declaration.len()..];
                if let Some(end) = value.find('"') {
                    names.insert(value[..end].to_owned());
                }
            }
            None => unresolved.push(format!("env::var({ident}…)")),
        }
    }
    (names, unresolved)
}

#[test]
fn every_variable_read_in_source_is_documented() {
    let page = read(&doc_path());
    let root = repo_root();
    let mut found = BTreeMap::<String, Vec<String>>::new();
    let mut unresolved = Vec::new();
    for file in source_files() {
        let relative = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
        let (names, unknown) = variables_read(&read(&file));
        for name in names {
            found.entry(name).or_default().push(relative.clone());
        }
        unresolved.extend(unknown.into_iter().map(|read| format!("{relative}: {read}")));
    }
    assert!(
        unresolved.is_empty(),
        "variables read under a name this test cannot resolve (use a literal or a `const NAME: &str`): {unresolved:?}"
    );
    // The scan itself works: the alias read beside clap and the probe's variables are found.
    for expected in ["OTLP_ENDPOINT", "PORT", "BIND_ADDR"] {
        assert!(
            found.contains_key(expected),
            "the source scan missed {expected}: {found:?}"
        );
    }
    let missing: Vec<String> = found
        .iter()
        .filter(|(name, _)| !page.contains(&format!("`{name}`")))
        .map(|(name, files)| format!("{name} (read in {})", files.join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "variables read with std::env::var* but not in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn the_source_scan_reads_literals_and_constants() {
    let source = "fn a() { std::env::var(\"ONE\"); env::var_os( \"TWO\" ); std::env::vars(); }\n\
                  const NAME: &str = \"THREE\";\nfn b() { std::env::var(NAME); }\n\
                  #[cfg(test)]\nmod tests { fn c() { std::env::var(\"FOUR\"); } }\n";
    let (names, unresolved) = variables_read(source);
    assert_eq!(
        names,
        ["ONE", "THREE", "TWO"].map(str::to_owned).into_iter().collect()
    );
    assert!(unresolved.is_empty());
    let (_, unresolved) = variables_read("fn d(name: &str) { std::env::var(name); }");
    assert_eq!(unresolved, ["env::var(name…)"]);
}
