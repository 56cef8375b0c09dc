//! The journal as the engine's state machine: its events are the ledger's entries.

use libertum_domain::{Result, ledger};
use libertum_store::{Described, StateMachine};
use time::OffsetDateTime;

pub const LEDGER_SOURCE: &str = "/libertum/ledger";

/// The journal: the chain head, each subject's version and every account's latest balance.
/// The entries are the log itself (an entry's sequence number is its position), and earlier
/// balances are index rows: neither is held in memory.
#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct LedgerState {
    pub journal: ledger::Journal,
}

impl StateMachine for LedgerState {
    type Command = ledger::Incoming;
    type Event = ledger::Entry;
    const SOURCE: &'static str = LEDGER_SOURCE;

    fn execute(
        &mut self,
        incoming: ledger::Incoming,
        _now: OffsetDateTime,
    ) -> Result<Vec<ledger::Entry>> {
        let Some(entry) = self.journal.decide(&incoming)? else {
            // Delivered before: recorded once already.
            return Ok(Vec::new());
        };
        self.apply(&entry);
        Ok(vec![entry])
    }

    fn apply(&mut self, entry: &ledger::Entry) {
        self.journal.apply(entry);
    }

    fn take_index(&mut self) -> Vec<(String, Vec<u8>)> {
        self.journal.take_index()
    }

    fn describe(entry: &ledger::Entry) -> Described<'_> {
        Described {
            family: "ledger",
            name: "entry_recorded",
            subject: &entry.subject,
            actor: &entry.actor,
            time: entry.at,
        }
    }
}
