//! The ledger: a double-entry journal whose entries are chained by SHA-256.
//!
//! Every entry records one event; movements become postings between accounts. The hash of an entry
//! is `SHA-256(previous hash || canonical bytes)`, the first one chaining to [`GENESIS`]. The
//! canonical bytes are the JSON object `{"seq","at_ns","event_id","event_type","subject","actor",
//! "postings":[{"from","to","unit","amount"}]}` with keys in exactly that order, no whitespace, the
//! time as integer nanoseconds since the Unix epoch and amounts as JSON integers (docs/ledger.md).

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::token::{Change, Event as TokenEvent};
use crate::{Amount, Error, Id, Result, Timestamp};

/// The hash the first entry chains to.
pub const GENESIS: [u8; 32] = [0; 32];

/// A movement of `amount` of `unit` (a token id or a currency code) from one account to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub from: String,
    pub to: String,
    pub unit: String,
    pub amount: Amount,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Gap-free, starting at 1.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    pub event_id: String,
    pub event_type: String,
    pub subject: String,
    pub actor: String,
    pub postings: Vec<Posting>,
    /// The token whose event this is and the token's version after it, for reconciliation.
    pub token: Option<(Id, u64)>,
    /// The version of the event's subject after it (its `subjectversion`): a delivery of the
    /// subject's stream at or below the version recorded is not recorded again.
    #[serde(default)]
    pub subject_version: u64,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    at_ns: i128,
    event_id: &'a str,
    event_type: &'a str,
    subject: &'a str,
    actor: &'a str,
    postings: Vec<CanonicalPosting<'a>>,
}

#[derive(Serialize)]
struct CanonicalPosting<'a> {
    from: &'a str,
    to: &'a str,
    unit: &'a str,
    amount: u128,
}

impl Entry {
    /// The canonical bytes the hash covers.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let canonical = Canonical {
            seq: self.seq,
            at_ns: self.at.unix_timestamp_nanos(),
            event_id: &self.event_id,
            event_type: &self.event_type,
            subject: &self.subject,
            actor: &self.actor,
            postings: self
                .postings
                .iter()
                .map(|p| CanonicalPosting {
                    from: &p.from,
                    to: &p.to,
                    unit: &p.unit,
                    amount: p.amount.0,
                })
                .collect(),
        };
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_vec(&canonical).unwrap_or_default()
    }

    /// `SHA-256(prev || canonical bytes)`, lower-case hex.
    pub fn compute_hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(prev);
        hasher.update(self.canonical_bytes());
        hasher.finalize().into()
    }
}

/// An event as the ledger receives it, before it becomes an entry.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub event_id: String,
    pub event_type: String,
    pub subject: String,
    pub at: Timestamp,
    pub actor: String,
    pub postings: Vec<Posting>,
    pub token: Option<(Id, u64)>,
    /// The version of the subject's stream after this event.
    pub subject_version: u64,
}

pub fn investor_account(id: &str) -> String {
    format!("investor:{id}")
}

/// The postings a token event makes. Issuance and redemption have their own account per token,
/// so `-balance(issuance) - balance(redemption) = supply` at every sequence number.
pub fn postings_for(event: &TokenEvent) -> Vec<Posting> {
    let posting = |from: String, to: String, unit: &str, amount: Amount| Posting {
        from,
        to,
        unit: unit.to_owned(),
        amount,
    };
    match &event.change {
        Change::Issued {
            token_id,
            to,
            amount,
            ..
        } => {
            vec![posting(
                format!("issuance:{token_id}"),
                investor_account(to),
                token_id,
                *amount,
            )]
        }
        Change::Transferred {
            token_id,
            from,
            to,
            amount,
            ..
        } => {
            vec![posting(
                investor_account(from),
                investor_account(to),
                token_id,
                *amount,
            )]
        }
        Change::Redeemed {
            token_id,
            from,
            amount,
        } => {
            vec![posting(
                investor_account(from),
                format!("redemption:{token_id}"),
                token_id,
                *amount,
            )]
        }
        Change::DistributionPaid {
            token_id,
            distribution,
            allocations,
        } => allocations
            .iter()
            .filter(|a| !a.amount.is_zero())
            .map(|a| {
                // A frozen holder's share is held back in an account of its own.
                let to = if a.withheld {
                    format!("withheld:{}", a.investor_id)
                } else {
                    investor_account(&a.investor_id)
                };
                posting(
                    format!("distribution:{token_id}"),
                    to,
                    distribution.currency.as_str(),
                    a.amount,
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A balance after an entry: `(seq, at, balance)`.
type Point = (u64, Timestamp, i128);

/// The stream an event belongs to: its family (`asset`, `token`) and subject.
fn stream_of(event_type: &str, subject: &str) -> String {
    let family = event_type.split('.').nth(1).unwrap_or_default();
    format!("{family}/{subject}")
}

/// The ledger's state: the chain head, how far each subject's stream is recorded, and every
/// account's balance history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    head_seq: u64,
    head_hash: [u8; 32],
    /// Per stream ([`stream_of`]), the latest subject version recorded: one number per subject,
    /// however long its history.
    streams: FxHashMap<String, u64>,
    /// `(account, unit) -> balance after each entry that touched it`.
    accounts: FxHashMap<(String, String), Vec<Point>>,
    /// Per unit, the accounts that ever held it.
    holders: FxHashMap<String, Vec<String>>,
    /// Each token's versions as recorded: `(version, seq of its entry)`, in order.
    token_versions: FxHashMap<Id, Vec<(u64, u64)>>,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            head_seq: 0,
            head_hash: GENESIS,
            streams: FxHashMap::default(),
            accounts: FxHashMap::default(),
            holders: FxHashMap::default(),
            token_versions: FxHashMap::default(),
        }
    }
}

/// Where to read a balance: after a sequence number, or at the end of a moment.
#[derive(Debug, Clone, Copy)]
pub enum AsOf {
    Latest,
    Seq(u64),
    Time(Timestamp),
}

impl Journal {
    pub fn head(&self) -> (u64, String) {
        (self.head_seq, hex::encode(self.head_hash))
    }

    /// The latest version of the subject's stream recorded, 0 if none.
    pub fn stream_version(&self, event_type: &str, subject: &str) -> u64 {
        self.streams
            .get(&stream_of(event_type, subject))
            .copied()
            .unwrap_or(0)
    }

    /// The latest version of `token_id` recorded, 0 if none.
    pub fn token_version(&self, token_id: &str) -> u64 {
        self.token_versions
            .get(token_id)
            .and_then(|v| v.last())
            .map_or(0, |(version, _)| *version)
    }

    /// The sequence number of the entry that took `token_id` to `version`.
    pub fn seq_of_token_version(&self, token_id: &str, version: u64) -> Option<u64> {
        let versions = self.token_versions.get(token_id)?;
        let i = versions.binary_search_by_key(&version, |(v, _)| *v).ok()?;
        Some(versions[i].1)
    }

    /// Turns an incoming event into the next entry. An event at or below the version of its
    /// subject's stream already recorded (a duplicate, or an older event delivered again) gives
    /// none.
    pub fn decide(&self, incoming: &Incoming) -> Result<Option<Entry>> {
        if incoming.event_id.is_empty() {
            return Err(Error::invalid("id", "an event needs an id"));
        }
        if incoming.subject_version == 0 {
            return Err(Error::invalid(
                "subjectversion",
                "an event needs its subject's version",
            ));
        }
        if incoming.subject_version <= self.stream_version(&incoming.event_type, &incoming.subject)
        {
            return Ok(None);
        }
        let mut entry = Entry {
            seq: self.head_seq + 1,
            at: incoming.at,
            event_id: incoming.event_id.clone(),
            event_type: incoming.event_type.clone(),
            subject: incoming.subject.clone(),
            actor: incoming.actor.clone(),
            postings: incoming.postings.clone(),
            token: incoming.token.clone(),
            subject_version: incoming.subject_version,
            prev_hash: hex::encode(self.head_hash),
            hash: String::new(),
        };
        entry.hash = hex::encode(entry.compute_hash(&self.head_hash));
        Ok(Some(entry))
    }

    /// Applies an entry decided earlier (or read back from the store).
    pub fn apply(&mut self, entry: &Entry) {
        self.head_seq = entry.seq;
        if let Ok(bytes) = hex::decode(&entry.hash)
            && let Ok(hash) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            self.head_hash = hash;
        }
        if entry.subject_version != 0 {
            let stream = self
                .streams
                .entry(stream_of(&entry.event_type, &entry.subject))
                .or_insert(0);
            *stream = (*stream).max(entry.subject_version);
        }
        if let Some((token, version)) = &entry.token {
            self.token_versions
                .entry(token.clone())
                .or_default()
                .push((*version, entry.seq));
        }
        for p in &entry.postings {
            let amount = p.amount.0 as i128;
            self.move_balance(&p.from, &p.unit, -amount, entry);
            self.move_balance(&p.to, &p.unit, amount, entry);
        }
    }

    fn move_balance(&mut self, account: &str, unit: &str, delta: i128, entry: &Entry) {
        let key = (account.to_owned(), unit.to_owned());
        let points = self.accounts.entry(key).or_insert_with(|| {
            self.holders
                .entry(unit.to_owned())
                .or_default()
                .push(account.to_owned());
            Vec::new()
        });
        let before = points.last().map_or(0, |p| p.2);
        // Amounts are bounded by 10^36, so only an absurd history could reach the bound.
        points.push((entry.seq, entry.at, before.saturating_add(delta)));
    }

    /// The balance of `account` in `unit` at `as_of`.
    pub fn balance(&self, account: &str, unit: &str, as_of: AsOf) -> i128 {
        let Some(points) = self.accounts.get(&(account.to_owned(), unit.to_owned())) else {
            return 0;
        };
        let end = match as_of {
            AsOf::Latest => points.len(),
            AsOf::Seq(seq) => points.partition_point(|p| p.0 <= seq),
            AsOf::Time(t) => points.partition_point(|p| p.1 <= t),
        };
        end.checked_sub(1).map_or(0, |i| points[i].2)
    }

    /// Every account that ever held `unit`.
    pub fn accounts_of(&self, unit: &str) -> &[String] {
        self.holders.get(unit).map_or(&[], Vec::as_slice)
    }

    /// Every account and unit, with its latest balance.
    pub fn all_balances(&self) -> impl Iterator<Item = (&str, &str, i128)> {
        self.accounts
            .iter()
            .map(|((a, u), points)| (a.as_str(), u.as_str(), points.last().map_or(0, |p| p.2)))
    }

    /// Investors' positive balances of `token_id` at `as_of`, sorted by investor.
    pub fn cap_table(&self, token_id: &str, as_of: AsOf) -> Vec<(String, Amount)> {
        let mut rows: Vec<(String, Amount)> = self
            .accounts_of(token_id)
            .iter()
            .filter_map(|account| {
                let investor = account.strip_prefix("investor:")?;
                let balance = self.balance(account, token_id, as_of);
                (balance > 0).then(|| (investor.to_owned(), Amount(balance.unsigned_abs())))
            })
            .collect();
        rows.sort();
        rows
    }
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub valid: bool,
    pub entries_checked: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub first_broken: Option<Broken>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broken {
    pub seq: u64,
    /// `sequence_gap`, `prev_hash_mismatch` or `hash_mismatch`.
    pub problem: String,
}

/// Walks entries in stored order, recomputing each hash; stops at the first broken one.
pub fn verify(entries: impl IntoIterator<Item = Entry>) -> Verification {
    let mut prev = GENESIS;
    let mut expected = 1;
    let mut checked = 0;
    for entry in entries {
        let problem = if entry.seq != expected {
            Some("sequence_gap")
        } else if entry.prev_hash != hex::encode(prev) {
            Some("prev_hash_mismatch")
        } else {
            let hash = entry.compute_hash(&prev);
            if entry.hash != hex::encode(hash) {
                Some("hash_mismatch")
            } else {
                prev = hash;
                None
            }
        };
        if let Some(problem) = problem {
            return Verification {
                valid: false,
                entries_checked: checked,
                head_seq: expected - 1,
                head_hash: hex::encode(prev),
                first_broken: Some(Broken {
                    seq: entry.seq,
                    problem: problem.to_owned(),
                }),
            };
        }
        checked += 1;
        expected += 1;
    }
    Verification {
        valid: true,
        entries_checked: checked,
        head_seq: expected - 1,
        head_hash: hex::encode(prev),
        first_broken: None,
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn incoming(id: &str, version: u64, postings: Vec<Posting>) -> Incoming {
        Incoming {
            event_id: id.into(),
            event_type: "libertum.token.transferred.v1".into(),
            subject: "tok_1".into(),
            at: datetime!(2026-01-01 00:00 UTC),
            actor: "agent".into(),
            postings,
            token: None,
            subject_version: version,
        }
    }

    fn post(from: &str, to: &str, amount: u128) -> Posting {
        Posting {
            from: from.into(),
            to: to.into(),
            unit: "tok_1".into(),
            amount: Amount(amount),
        }
    }

    fn journal_of(n: usize) -> (Journal, Vec<Entry>) {
        let mut journal = Journal::default();
        let mut entries = Vec::new();
        for i in 0..n {
            let e = journal
                .decide(&incoming(
                    &format!("ev{i}"),
                    i as u64 + 1,
                    vec![post("issuance:tok_1", "investor:a", 10)],
                ))
                .expect("valid")
                .expect("new");
            journal.apply(&e);
            entries.push(e);
        }
        (journal, entries)
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let (journal, entries) = journal_of(5);
        let v = verify(entries);
        assert!(v.valid);
        assert_eq!(v.entries_checked, 5);
        assert_eq!((v.head_seq, v.head_hash), journal.head());
    }

    #[test]
    fn a_changed_amount_is_named_as_the_first_broken_entry() {
        let (_, mut entries) = journal_of(5);
        entries[2].postings[0].amount = Amount(11);
        let v = verify(entries);
        assert!(!v.valid);
        assert_eq!(
            v.first_broken,
            Some(Broken {
                seq: 3,
                problem: "hash_mismatch".into()
            })
        );
    }

    #[test]
    fn a_removed_entry_is_a_gap() {
        let (_, mut entries) = journal_of(5);
        entries.remove(1);
        let v = verify(entries);
        assert_eq!(
            v.first_broken,
            Some(Broken {
                seq: 3,
                problem: "sequence_gap".into()
            })
        );
    }

    #[test]
    fn the_same_event_twice_makes_one_entry() {
        let (journal, _) = journal_of(1);
        let again = journal.decide(&incoming(
            "ev0",
            1,
            vec![post("issuance:tok_1", "investor:a", 10)],
        ));
        assert_eq!(again, Ok(None));
    }

    #[test]
    fn an_older_event_of_a_subject_delivered_after_a_newer_one_is_not_recorded() {
        let (journal, _) = journal_of(3);
        let older = journal.decide(&incoming(
            "a-copy-of-ev1-with-a-new-id",
            2,
            vec![post("issuance:tok_1", "investor:a", 10)],
        ));
        assert_eq!(older, Ok(None), "version 2 of tok_1 is already recorded");
        // Another subject's stream is its own.
        let mut other = incoming("other", 1, Vec::new());
        other.subject = "tok_2".into();
        assert!(journal.decide(&other).unwrap().is_some());
        // The same subject name in another family is another stream.
        other.event_type = "libertum.asset.approved.v1".into();
        other.subject = "tok_1".into();
        assert!(journal.decide(&other).unwrap().is_some());
        assert_eq!(
            journal.stream_version("libertum.token.issued.v1", "tok_1"),
            3
        );
    }

    #[test]
    fn an_event_without_its_subject_version_is_refused() {
        let journal = Journal::default();
        let err = journal.decide(&incoming("x", 0, Vec::new())).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("subjectversion"));
    }

    #[test]
    fn balances_at_a_sequence_number_come_from_the_entries_before_it() {
        let (journal, _) = journal_of(3);
        assert_eq!(journal.balance("investor:a", "tok_1", AsOf::Seq(2)), 20);
        assert_eq!(journal.balance("investor:a", "tok_1", AsOf::Latest), 30);
        assert_eq!(
            journal.balance("issuance:tok_1", "tok_1", AsOf::Latest),
            -30
        );
        assert_eq!(
            journal.cap_table("tok_1", AsOf::Seq(1)),
            vec![("a".to_owned(), Amount(10))]
        );
    }

    #[test]
    fn a_token_version_maps_to_the_entry_that_reached_it() {
        let mut journal = Journal::default();
        for (i, version) in [1u64, 2, 3].into_iter().enumerate() {
            let mut event = incoming(
                &format!("t{i}"),
                version,
                vec![post("issuance:tok_1", "investor:a", 10)],
            );
            event.token = Some((Id::from("tok_1"), version));
            let entry = journal.decide(&event).expect("valid").expect("new");
            journal.apply(&entry);
        }
        assert_eq!(journal.token_version("tok_1"), 3);
        assert_eq!(journal.seq_of_token_version("tok_1", 2), Some(2));
        assert_eq!(journal.seq_of_token_version("tok_1", 9), None);
        // Reconciling at version 2 compares the balances as they were then.
        let seq = journal.seq_of_token_version("tok_1", 2).expect("recorded");
        assert_eq!(journal.balance("investor:a", "tok_1", AsOf::Seq(seq)), 20);
    }

    #[test]
    fn canonical_bytes_are_the_documented_json() {
        let (_, entries) = journal_of(1);
        let text = String::from_utf8(entries[0].canonical_bytes()).expect("utf-8");
        assert_eq!(
            text,
            r#"{"seq":1,"at_ns":1767225600000000000,"event_id":"ev0","event_type":"libertum.token.transferred.v1","subject":"tok_1","actor":"agent","postings":[{"from":"issuance:tok_1","to":"investor:a","unit":"tok_1","amount":10}]}"#
        );
    }
}
