//! Test-only failpoints: a named step where a debug build can be held, so a test can crash or
//! stop a process at exactly that step (`SHOPSTACK_FAILPOINTS=cart.after_reserve=pause`).
//!
//! Only debug builds have them: in a release build [`hit`] is an empty function, [`init`] reads
//! nothing, and the variable's name is not in the binary (docs/development.md says how that is
//! checked). Steps with a failpoint are listed in docs/development.md.
//!
//! Written here rather than taken from the `fail` crate: its actions block the calling thread
//! (a condition variable, `thread::sleep`), which on a Tokio worker stalls every task of that
//! worker; a step here is held by holding only its own future.

/// What a failpoint does when its step is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Never go on: the step is held until the process stops.
    Pause,
    /// Go on after this many milliseconds.
    Sleep(u64),
}

/// Parse `name=action;name=action`, an action being `pause` or `sleep(MS)`.
pub fn parse(spec: &str) -> Result<Vec<(String, Action)>, String> {
    spec.split(';')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (name, action) = entry
                .split_once('=')
                .ok_or_else(|| format!("failpoint {entry:?} is not name=action"))?;
            let action = match action.trim() {
                "pause" => Action::Pause,
                other => other
                    .strip_prefix("sleep(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .and_then(|ms| ms.trim().parse().ok())
                    .map(Action::Sleep)
                    .ok_or_else(|| format!("failpoint action {other:?} is not pause or sleep(MS)"))?,
            };
            Ok((name.trim().to_owned(), action))
        })
        .collect()
}

#[cfg(debug_assertions)]
mod active {
    use super::Action;
    use std::sync::OnceLock;

    /// The variable naming the failpoints of a debug build.
    const VARIABLE: &str = "SHOPSTACK_FAILPOINTS";

    static CONFIGURED: OnceLock<Vec<(String, Action)>> = OnceLock::new();

    pub fn init() -> Result<(), String> {
        let spec = std::env::var(VARIABLE).unwrap_or_default();
        let parsed = super::parse(&spec)?;
        for (name, action) in &parsed {
            tracing::warn!(failpoint = %name, ?action, "failpoint armed (debug build, for tests)");
        }
        let _ = CONFIGURED.set(parsed);
        Ok(())
    }

    pub async fn hit(name: &str) {
        let Some(action) = CONFIGURED
            .get()
            .and_then(|all| all.iter().find(|(armed, _)| armed == name))
            .map(|(_, action)| *action)
        else {
            return;
        };
        tracing::warn!(failpoint = name, ?action, "failpoint reached");
        match action {
            Action::Pause => std::future::pending::<()>().await,
            Action::Sleep(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
        }
    }
}

/// Read the failpoints from the environment, once, before the service serves (debug builds;
/// a release build reads nothing). A malformed list is an error.
pub fn init() -> Result<(), String> {
    #[cfg(debug_assertions)]
    return active::init();
    #[cfg(not(debug_assertions))]
    Ok(())
}

/// The step `name` is reached: do what its failpoint says, if one is armed (debug builds only).
#[inline]
pub async fn hit(name: &str) {
    #[cfg(debug_assertions)]
    active::hit(name).await;
    #[cfg(not(debug_assertions))]
    let _ = name;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_failpoints_parse() {
        assert_eq!(
            parse("cart.after_reserve=pause; orders.after_commit=sleep(250)").unwrap(),
            vec![
                ("cart.after_reserve".to_owned(), Action::Pause),
                ("orders.after_commit".to_owned(), Action::Sleep(250)),
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert!(parse("cart.after_reserve").is_err());
        assert!(parse("cart.after_reserve=explode").is_err());
        assert!(parse("cart.after_reserve=sleep(x)").is_err());
    }
}
