//! The journal of failures and recoveries that `lego status` shows: the
//! last [`JOURNAL_LEN`] entries, newest last.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use lego_transport::lock;
use lego_wire::control::EventInfo;
use lego_wire::types::EventKind;

/// How many entries `lego status` can show.
pub const JOURNAL_LEN: usize = 64;

struct Entry {
    at: Instant,
    kind: EventKind,
    text: String,
    took_ms: Option<u64>,
}

/// Recent failures and recoveries.
#[derive(Default)]
pub struct Journal {
    entries: Mutex<VecDeque<Entry>>,
}

impl Journal {
    pub fn record(&self, kind: EventKind, text: String, took_ms: Option<u64>) {
        let mut e = lock(&self.entries);
        if e.len() == JOURNAL_LEN {
            e.pop_front();
        }
        e.push_back(Entry {
            at: Instant::now(),
            kind,
            text,
            took_ms,
        });
    }

    pub fn snapshot(&self) -> Vec<EventInfo> {
        lock(&self.entries)
            .iter()
            .map(|e| EventInfo {
                ago_ms: e.at.elapsed().as_millis() as u64,
                kind: e.kind,
                text: e.text.clone(),
                took_ms: e.took_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_entries() {
        let j = Journal::default();
        for i in 0..JOURNAL_LEN + 3 {
            j.record(EventKind::Dead, format!("{i}"), None);
        }
        let s = j.snapshot();
        assert_eq!(s.len(), JOURNAL_LEN);
        assert_eq!(s[0].text, "3");
        assert_eq!(s.last().unwrap().text, format!("{}", JOURNAL_LEN + 2));
    }
}
