//! The timeline file: how long the shoppers shop, how many, and the faults at their times.
//!
//! One statement a line; `#` starts a comment:
//!
//! ```text
//! duration 75s
//! shoppers 24
//! 10s kill redis-master
//! 40s restart redis-master
//! 45s set cart.enabled=true,cart.failure_rate=0.2
//! 55s set cart.enabled=false
//! ```
//!
//! `set` takes what the load test's `--fault-at` takes after its `TIME:`, checked by the same
//! parser ([`loadtest::faults::FaultStep`]).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use loadtest::cli::parse_duration;
use loadtest::faults::FaultStep;

/// A process the timeline may SIGKILL and start again. The gateway is not one: it is the only
/// front door, so killing it measures nothing but refused connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    RedisMaster,
    RedisReplica,
    NatsNode,
    CatalogReplica,
    CartReplica,
    OrdersReplica,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::RedisMaster,
        Target::RedisReplica,
        Target::NatsNode,
        Target::CatalogReplica,
        Target::CartReplica,
        Target::OrdersReplica,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::RedisMaster => "redis-master",
            Target::RedisReplica => "redis-replica",
            Target::NatsNode => "nats-node",
            Target::CatalogReplica => "catalog-replica",
            Target::CartReplica => "cart-replica",
            Target::OrdersReplica => "orders-replica",
        }
    }

    /// The stack survives the loss of one process of each group at a time: one Redis node
    /// (its shard's other node serves), one NATS server (two of three keep the quorum), one
    /// replica of each service (the other serves).
    fn group(self) -> &'static str {
        match self {
            Target::RedisMaster | Target::RedisReplica => "Redis node",
            Target::NatsNode => "NATS server",
            Target::CatalogReplica => "catalog replica",
            Target::CartReplica => "cart replica",
            Target::OrdersReplica => "orders replica",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// What happens at an event's time.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// SIGKILL one process of the kind.
    Kill(Target),
    /// Start again the process the latest `kill` of the kind took down.
    Restart(Target),
    /// Change simulation profiles through the gateway's admin API (the load test's `--fault-at`).
    Simulation(FaultStep),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// How long after the load began.
    pub at: Duration,
    /// The file's line (1-based), for messages.
    pub line: usize,
    pub action: Action,
    /// The statement as written (without the time and comment), for the report.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub duration: Duration,
    pub shoppers: usize,
    /// In time order (the file's order among events at the same time).
    pub events: Vec<Event>,
}

/// Most shoppers a timeline may ask for: each is a task with its own connections on this machine.
const MAX_SHOPPERS: usize = 1_000;
/// Longest load a timeline may ask for.
const MAX_DURATION: Duration = Duration::from_secs(3_600);

impl Timeline {
    /// Read and check the file at `path`; errors name the file and line.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("cannot read the timeline {}: {error}", path.display()))?;
        Self::parse(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
    }

    /// Parse a timeline's text; errors start with `line N:`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut duration = None;
        let mut shoppers = None;
        let mut events = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let statement = raw.split('#').next().unwrap_or_default().trim();
            if statement.is_empty() {
                continue;
            }
            let fail = |message: String| anyhow::anyhow!("line {line}: {message}");
            let (first, rest) = statement
                .split_once(char::is_whitespace)
                .map_or((statement, ""), |(first, rest)| (first, rest.trim()));
            match first {
                "duration" => {
                    if duration.is_some() {
                        return Err(fail("duration is given twice".into()));
                    }
                    let value = parse_duration(rest).map_err(|error| fail(format!("duration: {error}")))?;
                    if value.is_zero() || value > MAX_DURATION {
                        return Err(fail(format!(
                            "duration {rest:?} must be above 0 and at most {}s",
                            MAX_DURATION.as_secs()
                        )));
                    }
                    duration = Some((value, line));
                }
                "shoppers" => {
                    if shoppers.is_some() {
                        return Err(fail("shoppers is given twice".into()));
                    }
                    let value: usize = rest
                        .parse()
                        .ok()
                        .filter(|count| (1..=MAX_SHOPPERS).contains(count))
                        .ok_or_else(|| {
                            fail(format!(
                                "shoppers {rest:?}: expected a whole number from 1 to {MAX_SHOPPERS}"
                            ))
                        })?;
                    shoppers = Some(value);
                }
                time => {
                    let at = parse_duration(time).map_err(|error| {
                        fail(format!(
                            "expected `duration`, `shoppers` or `TIME kill|restart|set …`; the time: {error}"
                        ))
                    })?;
                    let (verb, argument) = rest
                        .split_once(char::is_whitespace)
                        .map_or((rest, ""), |(verb, argument)| (verb, argument.trim()));
                    let target = || {
                        Target::ALL
                            .into_iter()
                            .find(|target| target.name() == argument)
                            .ok_or_else(|| {
                                let names: Vec<&str> = Target::ALL.iter().map(|target| target.name()).collect();
                                fail(format!(
                                    "{verb} {argument:?}: unknown process; use one of {} (the gateway is the only front door and is not killed)",
                                    names.join(", ")
                                ))
                            })
                    };
                    let action = match verb {
                        "kill" => Action::Kill(target()?),
                        "restart" => Action::Restart(target()?),
                        "set" => {
                            // The load test's --fault-at syntax, timed in milliseconds.
                            let step = format!("{}ms:{argument}", at.as_millis());
                            Action::Simulation(
                                step.parse::<FaultStep>()
                                    .map_err(|error| fail(format!("set: {error:#}")))?,
                            )
                        }
                        "" => {
                            return Err(fail(format!(
                                "{time}: what happens then? expected kill, restart or set"
                            )));
                        }
                        other => {
                            return Err(fail(format!("{other:?}: expected kill, restart or set")));
                        }
                    };
                    events.push(Event {
                        at,
                        line,
                        action,
                        text: rest.to_owned(),
                    });
                }
            }
        }
        let (duration, _) =
            duration.ok_or_else(|| anyhow::anyhow!("no `duration` line (e.g. `duration 75s`)"))?;
        events.sort_by_key(|event| event.at);
        check_order(&events, duration)?;
        Ok(Self {
            duration,
            shoppers: shoppers.unwrap_or(24),
            events,
        })
    }
}

/// Events within the load, at most one process of each group down at a time, and a restart
/// only of what a kill took down.
fn check_order(events: &[Event], duration: Duration) -> anyhow::Result<()> {
    // Group → the line of the kill that took its process down.
    let mut down: std::collections::BTreeMap<&str, (Target, usize)> = std::collections::BTreeMap::new();
    for event in events {
        let line = event.line;
        if event.at >= duration {
            anyhow::bail!(
                "line {line}: {:?} is at or after the end of the load ({}s)",
                event.text,
                duration.as_secs_f64()
            );
        }
        match &event.action {
            Action::Kill(target) => {
                if let Some((_, killed)) = down.get(target.group()) {
                    anyhow::bail!(
                        "line {line}: kill {target}: a {} is already down (killed on line {killed}); \
                         restart it first: the stack survives one loss of each kind at a time",
                        target.group()
                    );
                }
                down.insert(target.group(), (*target, line));
            }
            Action::Restart(target) => match down.get(target.group()) {
                Some((killed, _)) if killed == target => {
                    down.remove(target.group());
                }
                _ => anyhow::bail!("line {line}: restart {target}: no earlier `kill {target}` left one down"),
            },
            Action::Simulation(step) => {
                // The gateway changes a service's simulation on every replica or refuses.
                for service in step.patches.keys() {
                    let group = format!("{service} replica");
                    if let Some((target, killed)) = down.get(group.as_str()) {
                        anyhow::bail!(
                            "line {line}: set {service}.…: a {group} is down (killed on line {killed}) and the \
                             gateway changes a simulation on every replica or refuses: `restart {target}` first"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        match Timeline::parse(text) {
            Ok(timeline) => panic!("{text:?} parsed: {timeline:?}"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn the_shipped_timeline_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("timeline.txt");
        let timeline = Timeline::read(&path).unwrap_or_else(|error| panic!("{error:#}"));
        assert_eq!(timeline.duration, Duration::from_secs(75));
        assert!(timeline.shoppers >= 20);
        assert!(
            timeline
                .events
                .iter()
                .any(|event| event.action == Action::Kill(Target::RedisMaster))
        );
        assert!(
            timeline
                .events
                .iter()
                .any(|event| event.action == Action::Kill(Target::NatsNode))
        );
        assert!(
            timeline
                .events
                .iter()
                .any(|event| event.action == Action::Kill(Target::CartReplica))
        );
    }

    #[test]
    fn a_good_file_gives_every_kind_of_event_in_time_order() {
        let timeline = Timeline::parse(
            "# comment\n\
             duration 1m\n\
             shoppers 5   # few\n\
             \n\
             30s restart redis-master\n\
             10s kill redis-master\n\
             12s set cart.enabled=true, cart.failure_rate=0.2\n\
             20s kill orders-replica\n",
        )
        .unwrap_or_else(|error| panic!("{error:#}"));
        assert_eq!(timeline.duration, Duration::from_secs(60));
        assert_eq!(timeline.shoppers, 5);
        let lines: Vec<usize> = timeline.events.iter().map(|event| event.line).collect();
        assert_eq!(lines, [6, 7, 8, 5]);
        assert_eq!(timeline.events[0].action, Action::Kill(Target::RedisMaster));
        let Action::Simulation(step) = &timeline.events[1].action else {
            panic!("not a simulation step: {:?}", timeline.events[1]);
        };
        assert_eq!(step.at, Duration::from_secs(12));
        assert_eq!(step.patches["cart"]["failure_rate"], serde_json::json!(0.2));
        assert_eq!(timeline.events[3].action, Action::Restart(Target::RedisMaster));
    }

    #[test]
    fn shoppers_default_to_24() {
        let timeline = Timeline::parse("duration 20s\n").unwrap_or_else(|error| panic!("{error:#}"));
        assert_eq!(timeline.shoppers, 24);
        assert!(timeline.events.is_empty());
    }

    #[test]
    fn each_kind_of_bad_input_names_its_line_and_field() {
        for (text, expected) in [
            ("shoppers 3\n", "no `duration` line"),
            ("duration soon\n", "line 1: duration"),
            ("duration 0s\n", "line 1: duration"),
            ("duration 10s\nduration 20s\n", "line 2: duration is given twice"),
            ("duration 10s\nshoppers many\n", "line 2: shoppers \"many\""),
            ("duration 10s\nshoppers 0\n", "line 2: shoppers"),
            (
                "duration 10s\nlater kill nats-node\n",
                "line 2: expected `duration`",
            ),
            ("duration 10s\n5s\n", "line 2: 5s: what happens then?"),
            (
                "duration 10s\n5s explode nats-node\n",
                "line 2: \"explode\": expected kill, restart or set",
            ),
            (
                "duration 10s\n5s kill gateway\n",
                "line 2: kill \"gateway\": unknown process",
            ),
            ("duration 10s\n5s kill\n", "line 2: kill \"\": unknown process"),
            ("duration 10s\n5s set cart.failure_rate=7\n", "line 2: set:"),
            (
                "duration 10s\n5s set cart.nonsense=1\n",
                "unknown field \"nonsense\"",
            ),
            ("duration 10s\n5s set\n", "line 2: set:"),
            (
                "duration 10s\n10s kill nats-node\n",
                "line 2: \"kill nats-node\" is at or after the end",
            ),
            (
                "duration 30s\n5s kill cart-replica\n6s kill cart-replica\n",
                "line 3: kill cart-replica: a cart replica is already down (killed on line 2)",
            ),
            (
                "duration 30s\n5s kill redis-master\n6s kill redis-replica\n",
                "line 3: kill redis-replica: a Redis node is already down",
            ),
            (
                "duration 30s\n5s restart nats-node\n",
                "line 2: restart nats-node: no earlier",
            ),
            (
                "duration 30s\n5s kill redis-master\n6s restart redis-replica\n",
                "line 3: restart redis-replica: no earlier",
            ),
        ] {
            let error = error_of(text);
            assert!(error.contains(expected), "{text:?}: {error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = Timeline::read(Path::new("/nonexistent/timeline.txt"))
            .err()
            .map(|error| format!("{error:#}"))
            .unwrap_or_default();
        assert!(error.contains("/nonexistent/timeline.txt"), "{error}");
    }
}
