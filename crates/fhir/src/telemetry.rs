//! Counts of FHIR requests by server and answer, for the engine's metrics
//! (`plexus_fhir_requests_total`).
//!
//! Process-wide rather than per client: clients are built in many places
//! (patient sync, send-to-EHR, polling) and cloned freely, and what an
//! operator wants is "how is server X answering", whichever part of the
//! engine asked. Servers are named by their configuration name, never by
//! URL; the count is per attempt (a retried request counts each try).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// What a request got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    /// An HTTP status.
    Status(u16),
    /// No HTTP answer: connection refused or reset, timeout, TLS failure.
    Transport,
}

impl Answer {
    /// The status code as text, or `transport`.
    pub fn label(self) -> String {
        match self {
            Answer::Status(s) => s.to_string(),
            Answer::Transport => "transport".to_string(),
        }
    }
}

fn table() -> &'static Mutex<HashMap<(String, Answer), u64>> {
    static TABLE: OnceLock<Mutex<HashMap<(String, Answer), u64>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Counts one request to `server` answered with `answer`.
pub(crate) fn record(server: &str, answer: Answer) {
    let mut table = table().lock().unwrap_or_else(|p| p.into_inner());
    match table.get_mut(&(server.to_string(), answer)) {
        Some(n) => *n += 1,
        None => {
            table.insert((server.to_string(), answer), 1);
        }
    }
}

/// Every `(server, answer, count)` since the process started, sorted.
pub fn requests() -> Vec<(String, Answer, u64)> {
    let table = table().lock().unwrap_or_else(|p| p.into_inner());
    let mut all: Vec<_> = table.iter().map(|((s, a), n)| (s.clone(), *a, *n)).collect();
    all.sort();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_server_and_answer() {
        record("unit-a", Answer::Status(200));
        record("unit-a", Answer::Status(200));
        record("unit-a", Answer::Transport);
        let mine: Vec<_> = requests().into_iter().filter(|(s, _, _)| s == "unit-a").collect();
        assert_eq!(
            mine,
            vec![("unit-a".to_string(), Answer::Status(200), 2), ("unit-a".to_string(), Answer::Transport, 1)]
        );
        assert_eq!(Answer::Status(404).label(), "404");
        assert_eq!(Answer::Transport.label(), "transport");
    }
}
