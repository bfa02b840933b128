//! The workspace's layering rules, read from `cargo metadata` and the sources:
//!
//! - services (`apps/*`) depend on shared crates (`common/*`), never on each other;
//! - shared crates never depend on a service (the test kit, never linked into a service, may);
//! - the test kit is never a normal or build dependency of a service or a shared crate, so no
//!   service binary links it (an ops tool that starts local servers, `ops/gameday`, may use it);
//! - every shared crate states its one job in the first line of its `lib.rs`;
//! - inside a shared crate, no two modules import each other in a circle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use stack_tests::repo_root;

const TEST_KIT: &str = "shopstack-testkit";

struct Package {
    name: String,
    dir: PathBuf,
    /// (dependency name, kind: "normal", "dev" or "build")
    dependencies: Vec<(String, String)>,
}

impl Package {
    fn is_service(&self) -> bool {
        self.dir
            .starts_with(repo_root().canonicalize().unwrap().join("apps"))
    }

    fn is_shared(&self) -> bool {
        self.dir
            .starts_with(repo_root().canonicalize().unwrap().join("common"))
    }
}

fn workspace_packages() -> Vec<Package> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| Package {
            name: package["name"].as_str().unwrap().to_owned(),
            dir: Path::new(package["manifest_path"].as_str().unwrap())
                .parent()
                .unwrap()
                .canonicalize()
                .unwrap(),
            dependencies: package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|dependency| {
                    (
                        dependency["name"].as_str().unwrap().to_owned(),
                        dependency["kind"].as_str().unwrap_or("normal").to_owned(),
                    )
                })
                .collect(),
        })
        .collect()
}

#[test]
fn services_depend_on_shared_crates_never_on_each_other() {
    let packages = workspace_packages();
    let services: BTreeSet<&str> = packages
        .iter()
        .filter(|package| package.is_service())
        .map(|package| package.name.as_str())
        .collect();
    assert!(services.len() >= 4, "services found: {services:?}");
    let mut wrong = Vec::new();
    for package in &packages {
        for (dependency, kind) in &package.dependencies {
            if kind == "dev" {
                continue;
            }
            if package.is_service() && services.contains(dependency.as_str()) {
                wrong.push(format!(
                    "service {} depends on service {dependency}",
                    package.name
                ));
            }
            if package.is_shared() && package.name != TEST_KIT && services.contains(dependency.as_str()) {
                wrong.push(format!(
                    "shared crate {} depends on service {dependency}",
                    package.name
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_test_kit_is_only_ever_a_dev_dependency_of_services_and_shared_crates() {
    let packages = workspace_packages();
    assert!(
        packages.iter().any(|package| package.name == TEST_KIT),
        "{TEST_KIT} is a workspace member"
    );
    let wrong: Vec<String> = packages
        .iter()
        .filter(|package| package.is_service() || package.is_shared())
        .flat_map(|package| {
            package
                .dependencies
                .iter()
                .filter(|(name, kind)| name == TEST_KIT && kind != "dev")
                .map(move |(_, kind)| format!("{} has {TEST_KIT} as a {kind} dependency", package.name))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_shared_crate_states_its_job_in_its_first_line() {
    let packages = workspace_packages();
    let shared: Vec<&Package> = packages.iter().filter(|package| package.is_shared()).collect();
    assert!(shared.len() >= 5, "shared crates found: {}", shared.len());
    for package in shared {
        let lib = std::fs::read_to_string(package.dir.join("src/lib.rs")).unwrap();
        let first = lib.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("//! ") && first.len() > 24,
            "{}: the first line of src/lib.rs must state the crate's job as a //! line, found {first:?}",
            package.name
        );
    }
}

/// The modules of one crate (its `src/*.rs` files, `lib.rs` and `main.rs` aside) and the
/// modules each one names through `crate::…` outside its tests.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let sources: BTreeMap<String, String> = std::fs::read_dir(src)
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let stem = path.file_stem()?.to_str()?.to_owned();
            (path.extension()? == "rs" && stem != "lib" && stem != "main")
                .then(|| (stem, std::fs::read_to_string(&path).unwrap()))
        })
        .collect();
    sources
        .iter()
        .map(|(module, text)| {
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let mut uses = BTreeSet::new();
            for line in code.lines().map(str::trim).filter(|line| !line.starts_with("//")) {
                for part in line.split("crate::").skip(1) {
                    let names: Vec<&str> = match part.strip_prefix('{') {
                        Some(group) => group.split(',').collect(),
                        None => vec![part],
                    };
                    for name in names {
                        let name: String = name
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if name != *module && sources.contains_key(&name) {
                            uses.insert(name);
                        }
                    }
                }
            }
            (module.clone(), uses)
        })
        .collect()
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_in_a_circle_inside_a_shared_crate() {
    let mut cycles = Vec::new();
    for package in workspace_packages().iter().filter(|package| package.is_shared()) {
        let src = package.dir.join("src");
        if !src.is_dir() {
            continue;
        }
        if let Some(cycle) = find_cycle(&module_graph(&src)) {
            cycles.push(format!("{}: {}", package.name, cycle.join(" → ")));
        }
    }
    assert!(
        cycles.is_empty(),
        "modules importing in a circle:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(node, next)| (node.to_owned(), next.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let acyclic: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec![])]
        .into_iter()
        .map(|(node, next)| (node.to_owned(), next.into_iter().map(str::to_owned).collect()))
        .collect();
    assert_eq!(find_cycle(&acyclic), None);
}
