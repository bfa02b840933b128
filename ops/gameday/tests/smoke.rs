//! `gameday` end to end, small: the clustered stack, a few shoppers for 18 s, a simulation
//! switch set and reset, a Redis master and a cart replica killed; then the report. And a bad timeline, refused
//! before anything starts. Needs the workspace's service binaries beside this one
//! (`cargo test --workspace` builds them) and Debian's redis-server, nats-server and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shopstack-gameday-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gameday(timeline: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gameday"))
        .arg("--timeline")
        .arg(timeline)
        .arg("--out")
        .arg(out)
        .output()
        .expect("gameday runs")
}

#[test]
fn a_short_game_day_reports_its_faults_and_passes_its_invariants() {
    let dir = scratch("smoke");
    let timeline = dir.join("timeline.txt");
    std::fs::write(
        &timeline,
        "duration 18s\n\
         shoppers 6\n\
         3s set cart.enabled=true,cart.failure_rate=1\n\
         6s set cart.enabled=false\n\
         8s kill redis-master\n\
         12s kill cart-replica\n",
    )
    .unwrap();
    let out = dir.join("out");
    let run = gameday(&timeline, &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "gameday failed:\n{stderr}");

    let run_dir = std::fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .next()
        .expect("a folder for the run");
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    let report: Value = serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).unwrap()).unwrap();
    assert!(
        stderr.contains(&run_dir.join("report.html").display().to_string()),
        "the path is printed"
    );

    for plot in ["plot-requests", "plot-errors", "plot-p99"] {
        assert!(html.contains(&format!("id=\"{plot}\"")), "no {plot} in the page");
    }
    // Four faults on each of the three plots.
    assert_eq!(html.matches("class=\"fault-marker\"").count(), 12);
    for statement in [
        "1 set cart.enabled=true,cart.failure_rate=1",
        "2 set cart.enabled=false",
        "3 kill redis-master",
        "4 kill cart-replica",
    ] {
        assert!(html.contains(statement), "no marker {statement:?}");
    }

    assert_eq!(report["passed"], true);
    let seconds = report["seconds"].as_array().unwrap();
    assert_eq!(seconds.len(), 18);
    let requests: u64 = seconds
        .iter()
        .map(|second| second["requests"].as_u64().unwrap())
        .sum();
    assert!(requests > 50, "too few requests to prove anything: {requests}");
    let events = report["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    for event in events {
        assert_eq!(event["applied"], true, "{event}");
        assert!(event["fired_s"].as_f64().is_some(), "{event}");
    }
    // Every cart answer is an injected 500 while the switch is on.
    assert!(
        events[0]["window"]["errors"].as_u64().unwrap_or(0) > 0,
        "{}",
        events[0]
    );
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|check| check["name"].as_str().unwrap())
        .collect();
    for expected in [
        "stock",
        "every order on the stream exactly once",
        "no client waited past its deadline",
    ] {
        assert!(
            names.iter().any(|name| name.contains(expected)),
            "no {expected:?} check in {names:?}"
        );
    }
    for check in checks {
        assert_eq!(check["passed"], true, "{check}");
    }
    let products = checks
        .iter()
        .find(|check| check["name"].as_str().unwrap().starts_with("stock"))
        .map(|check| check["items"].as_array().unwrap().len())
        .unwrap();
    assert!(products > 0, "the stock check names its products");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_timeline_is_refused_with_its_line_before_anything_starts() {
    let dir = scratch("bad");
    let timeline = dir.join("timeline.txt");
    std::fs::write(&timeline, "duration 30s\n5s kill gateway\n").unwrap();
    let out = dir.join("out");
    let started = std::time::Instant::now();
    let run = gameday(&timeline, &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 2: kill \"gateway\": unknown process"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is written for a bad timeline");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "nothing was started"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
