//! The audit trail of operator actions: every reload (accepted or rejected, with the version
//! and a summary of what changed), drain and enable (in cluster mode also those made on
//! another replica). Each entry is logged as a structured event (target `audit`) and kept in
//! a bounded in-memory list for `GET /admin/audit`.
//!
//! Only the admin path writes here; the lock it takes is never on the payment path.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// Entries kept; the oldest go first.
const CAPACITY: usize = 1_000;

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub at_unix_ms: u64,
    /// `reload`, `drain` or `enable`.
    pub action: &'static str,
    /// What triggered it: `admin`, `sighup`, `file`, `start`, or `peer` (a drain or enable
    /// made on another replica, in cluster mode).
    pub trigger: &'static str,
    /// `ok` or `rejected`.
    pub result: &'static str,
    /// The config version after the action.
    pub version: String,
    /// What changed, or why it was rejected.
    pub details: Vec<String>,
}

#[derive(Default)]
pub struct Audit {
    entries: Mutex<VecDeque<Entry>>,
}

impl Audit {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, entry: Entry) {
        tracing::info!(
            target: "audit",
            action = entry.action,
            trigger = entry.trigger,
            result = entry.result,
            version = %entry.version,
            details = ?entry.details,
            "audit"
        );
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() == CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// Newest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_thousand() {
        let audit = Audit::new();
        for i in 0..1_005 {
            audit.record(Entry {
                at_unix_ms: i,
                action: "drain",
                trigger: "admin",
                result: "ok",
                version: "v".into(),
                details: Vec::new(),
            });
        }
        let entries = audit.entries();
        assert_eq!(entries.len(), 1_000);
        assert_eq!(entries[0].at_unix_ms, 1_004);
        assert_eq!(entries[999].at_unix_ms, 5);
    }
}
