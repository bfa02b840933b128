//! What users read names things by what they are: no served OpenAPI document, no binary's
//! `--help`, no page of the docs (but the compatibility page, which says where each API style
//! comes from) and no dashboard or alert names a planning document by its number; and every
//! served OpenAPI document says ShopStack publishes it, under the MIT licence, rather than
//! naming the OpenAPI library's author as the API's contact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde_json::Value;
use shopstack_testkit::http::client;
use shopstack_testkit::stack::Stack;
use stack_tests::repo_root;

/// Where `text` names a planning document: the byte offsets of every match of
/// `(?i)seeds? ?\d{3}`.
fn planning_document_mentions(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for start in 0..bytes.len() {
        if !bytes[start..]
            .get(..4)
            .is_some_and(|word| word.eq_ignore_ascii_case(b"seed"))
        {
            continue;
        }
        let mut at = start + 4;
        // Each optional part is taken when present: giving it back can never make the three
        // digits match, since the character it would leave is not a digit.
        if bytes.get(at).is_some_and(|b| b.eq_ignore_ascii_case(&b's')) {
            at += 1;
        }
        if bytes.get(at) == Some(&b' ') {
            at += 1;
        }
        if bytes
            .get(at..at + 3)
            .is_some_and(|digits| digits.iter().all(u8::is_ascii_digit))
        {
            found.push(start);
        }
    }
    found
}

/// `name:line: text` for every line of `text` that names a planning document.
fn offending_lines(name: &str, text: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !planning_document_mentions(line).is_empty())
        .map(|(index, line)| format!("{name}:{}: {}", index + 1, line.trim()))
        .collect()
}

#[test]
fn the_matcher_finds_what_the_pattern_says() {
    // Split with `concat!` so this file does not itself name a planning document.
    for text in [
        concat!("seed", " 000"),
        concat!("Seed", " 003's"),
        concat!("seeds", " 000, 001"),
        concat!("SEEDS", "004"),
        concat!("(seed", "001)"),
        concat!("a seed", " 1234"),
    ] {
        assert!(!planning_document_mentions(text).is_empty(), "{text:?}");
    }
    for text in [
        "seed",
        "seed 00",
        "seeded 000",
        "seed  000",
        "seed_000",
        "seeds, 000",
        "reseed it",
    ] {
        assert!(planning_document_mentions(text).is_empty(), "{text:?}");
    }
}

// ---- Served OpenAPI documents ----------------------------------------------------------------

/// Everything wrong with one served document's `info` and text.
fn document_problems(service: &str, doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let info = &doc["info"];
    if info["title"]
        .as_str()
        .is_none_or(|title| !title.starts_with("ShopStack"))
    {
        problems.push(format!("{service}: info.title is {}", info["title"]));
    }
    if info["description"].as_str().is_none_or(str::is_empty) {
        problems.push(format!("{service}: info.description is missing"));
    }
    if info["license"]["name"] != "MIT" || info["license"]["identifier"] != "MIT" {
        problems.push(format!("{service}: info.license is {}, not MIT", info["license"]));
    }
    // No contact, or the project's: never a person or an e-mail address picked up at build time.
    let contact = &info["contact"];
    if !contact.is_null()
        && (contact["name"] != "ShopStack"
            || contact.get("email").is_some()
            || contact["url"] != "https://github.com/shopstack/shopstack")
    {
        problems.push(format!("{service}: info.contact is {contact}, not ShopStack's"));
    }
    let text = serde_json::to_string_pretty(doc).unwrap();
    problems.extend(offending_lines(&format!("{service} /openapi.json"), &text));
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_openapi_documents_are_shopstacks_and_name_no_planning_document() {
    let stack = Stack::start().await;
    let (catalog, cart, orders, gateway) = (&stack.catalog, &stack.cart, &stack.orders, &stack.gateway);

    let client = client();
    let mut problems = Vec::new();
    for (service, server) in [
        ("catalog", &catalog),
        ("cart", &cart),
        ("orders", &orders),
        ("gateway", &gateway),
    ] {
        let response = client.get(server.url("/openapi.json")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{service} /openapi.json");
        let doc: Value = response.json().await.unwrap();
        assert!(
            doc["paths"].as_object().is_some_and(|paths| paths.len() > 3),
            "{service}: a document without its routes"
        );
        problems.extend(document_problems(service, &doc));
    }
    // The gateway describes each proxied route with its backend's text: that text was read.
    let gateway_doc: Value = client
        .get(gateway.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        gateway_doc
            .pointer("/paths/~1cart~1add/post/summary")
            .and_then(Value::as_str)
            .is_some_and(|summary| !summary.starts_with("Proxied to")),
        "the gateway's document did not take the cart's description of POST /cart/add"
    );
    assert!(
        problems.is_empty(),
        "served OpenAPI documents:\n{}",
        problems.join("\n")
    );
}

// ---- --help --------------------------------------------------------------------------------

/// The long help of `command` and of every subcommand under it, each headed by its path.
fn all_help(command: &mut clap::Command, path: &str) -> Vec<(String, String)> {
    command.build();
    let mut texts = vec![(path.to_owned(), command.render_long_help().to_string())];
    for sub in command.get_subcommands_mut() {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_path = format!("{path} {}", sub.get_name());
        texts.extend(all_help(sub, &sub_path));
    }
    texts
}

#[test]
fn help_names_no_planning_document() {
    let mut commands = [
        ("gateway", gateway::GatewayConfig::command()),
        ("catalog", catalog::CatalogConfig::command()),
        ("cart", cart::CartConfig::command()),
        ("orders", orders::OrdersConfig::command()),
        ("loadtest", loadtest::cli::command()),
    ];
    let mut problems = Vec::new();
    let mut rendered = 0;
    for (name, command) in &mut commands {
        for (path, text) in all_help(command, name) {
            assert!(text.len() > 200, "{path} --help is suspiciously short:\n{text}");
            rendered += 1;
            problems.extend(offending_lines(&format!("{path} --help"), &text));
        }
    }
    // The gateway's `mint-token` is rendered too.
    assert!(rendered > commands.len(), "no subcommand's help was rendered");
    assert!(problems.is_empty(), "--help texts:\n{}", problems.join("\n"));
}

// ---- Docs, dashboards and alerts -----------------------------------------------------------

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn docs_dashboards_and_alerts_name_no_planning_document() {
    let root = repo_root();
    // The compatibility page is where each API style's origin is told, once.
    let exempt = root.join("docs").join("compatibility.md");
    let mut files: Vec<PathBuf> = files_under(&root.join("docs"))
        .into_iter()
        .filter(|path| *path != exempt)
        .collect();
    for top in ["README.md", "ARCHITECTURE.md", "CONTRIBUTING.md"] {
        let path = root.join(top);
        if path.is_file() {
            files.push(path);
        }
    }
    let observability = files_under(&root.join("observability"));
    assert!(
        observability
            .iter()
            .any(|path| path.extension().is_some_and(|ext| ext == "json")),
        "no dashboards found under observability/"
    );
    files.extend(observability);

    let mut problems = Vec::new();
    for path in &files {
        // Text files only (a binary file has nothing a user reads as prose).
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let name = path.strip_prefix(&root).unwrap_or(path).display().to_string();
        problems.extend(offending_lines(&name, &text));
    }
    assert!(
        problems.is_empty(),
        "{} lines name a planning document (say what the thing is instead; only \
         docs/compatibility.md names origins):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
