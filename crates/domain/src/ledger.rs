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
    /// A reversing entry: the movement it reverses, as its token and the token's version
    /// (whose entry the index finds: [`keys::version`]). In the canonical bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverses: Option<Reversed>,
    pub prev_hash: String,
    pub hash: String,
}

/// What a reversing entry reverses: the entry that took `token_id` to `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversed {
    pub token_id: Id,
    pub version: u64,
}

impl Reversed {
    /// What `event` reverses, if it is a reversal.
    pub fn by(event: &TokenEvent) -> Option<Reversed> {
        match &event.change {
            Change::Reversed {
                token_id, original, ..
            } => Some(Reversed {
                token_id: token_id.clone(),
                version: original.version,
            }),
            _ => None,
        }
    }
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
    /// Only in reversing entries, so that every other entry hashes as it always did.
    #[serde(skip_serializing_if = "Option::is_none")]
    reverses: Option<CanonicalReversed<'a>>,
}

#[derive(Serialize)]
struct CanonicalReversed<'a> {
    token_id: &'a str,
    version: u64,
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
            reverses: self.reverses.as_ref().map(|r| CanonicalReversed {
                token_id: &r.token_id,
                version: r.version,
            }),
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
    /// A reversal: what it reverses.
    pub reverses: Option<Reversed>,
}

pub fn investor_account(id: &str) -> String {
    format!("investor:{id}")
}

/// An investor's account for one share class of a token: `investor:{id}` for the default
/// class, `investor:{id}:{class}` for a named one.
pub fn class_account(id: &str, class: Option<&Id>) -> String {
    match class {
        Some(class) => format!("investor:{id}:{class}"),
        None => investor_account(id),
    }
}

/// Where an investor's pending holds of one class wait: `held:{id}[:{class}]`.
pub fn held_class_account(id: &str, class: Option<&Id>) -> String {
    match class {
        Some(class) => format!("held:{id}:{class}"),
        None => held_account(id),
    }
}

/// The investor an account of theirs belongs to (`investor:` or `held:`, of any class); `None`
/// for any other account.
pub fn account_holder(account: &str) -> Option<&str> {
    let rest = account
        .strip_prefix("investor:")
        .or_else(|| account.strip_prefix("held:"))?;
    Some(rest.split_once(':').map_or(rest, |(investor, _)| investor))
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
            class,
            ..
        } => {
            vec![posting(
                format!("issuance:{token_id}"),
                class_account(to, class.as_ref()),
                token_id,
                *amount,
            )]
        }
        Change::Transferred {
            token_id,
            from,
            to,
            amount,
            class,
            ..
        } => {
            vec![posting(
                class_account(from, class.as_ref()),
                class_account(to, class.as_ref()),
                token_id,
                *amount,
            )]
        }
        Change::Redeemed {
            token_id,
            from,
            amount,
            class,
        } => {
            vec![posting(
                class_account(from, class.as_ref()),
                format!("redemption:{token_id}"),
                token_id,
                *amount,
            )]
        }
        // Units move between two accounts of one holder; the supply does not change.
        Change::Converted {
            token_id,
            investor_id,
            from_class,
            to_class,
            amount,
            ..
        } => vec![posting(
            class_account(investor_id, from_class.as_ref()),
            class_account(investor_id, to_class.as_ref()),
            token_id,
            *amount,
        )],
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
        // A hold moves the amount to the sender's held account, where it waits: the ledger
        // shows what is in flight. Posting sends it on to the receiver (and the rest back);
        // voiding or expiry sends it all back.
        Change::HoldPlaced { token_id, hold, .. } => vec![posting(
            class_account(&hold.from, hold.class.as_ref()),
            held_class_account(&hold.from, hold.class.as_ref()),
            token_id,
            hold.amount,
        )],
        Change::HoldPosted {
            token_id,
            from,
            to,
            amount,
            released,
            payment,
            class,
            ..
        } => {
            let class = class.as_ref();
            let mut postings = vec![posting(
                held_class_account(from, class),
                class_account(to, class),
                token_id,
                *amount,
            )];
            if !released.is_zero() {
                postings.push(posting(
                    held_class_account(from, class),
                    class_account(from, class),
                    token_id,
                    *released,
                ));
            }
            // The cash leg, paid outside and confirmed: from the receiver to the sender.
            if let Some(paid) = payment {
                postings.push(posting(
                    investor_account(to),
                    investor_account(from),
                    paid.leg.currency.as_str(),
                    paid.leg.amount,
                ));
            }
            postings
        }
        Change::HoldVoided {
            token_id,
            from,
            amount,
            class,
            ..
        }
        | Change::HoldExpired {
            token_id,
            from,
            amount,
            class,
            ..
        } => vec![posting(
            held_class_account(from, class.as_ref()),
            class_account(from, class.as_ref()),
            token_id,
            *amount,
        )],
        // The original's posting the other way: an issuance goes back to the issuance
        // account, a redemption comes back from the redemption account.
        Change::Reversed {
            token_id,
            from,
            to,
            amount,
            class,
            ..
        } => {
            let from = match from {
                Some(investor) => class_account(investor, class.as_ref()),
                None => format!("redemption:{token_id}"),
            };
            let to = match to {
                Some(investor) => class_account(investor, class.as_ref()),
                None => format!("issuance:{token_id}"),
            };
            vec![posting(from, to, token_id, *amount)]
        }
        _ => Vec::new(),
    }
}

/// Where a pending hold's amount waits, per sender, in the token's unit: an investor's
/// holding is `investor:{id}` plus `held:{id}`.
pub fn held_account(id: &str) -> String {
    format!("held:{id}")
}

/// The stream an event belongs to: its family (`asset`, `token`) and subject.
fn stream_of(event_type: &str, subject: &str) -> String {
    let family = event_type.split('.').nth(1).unwrap_or_default();
    format!("{family}/{subject}")
}

/// Keys of the index rows: history read from the store by key instead of held in memory.
///
/// Accounts (an account in a unit) and tokens are numbered in the order the journal first sees
/// them, so a key names them in a few bytes instead of repeating their names in every row:
///
/// - `s{no}|{seq}`: account `no`'s balance after entry `seq`;
/// - `t{no}|{at}|{seq}`: the same balance, ordered by the entry's time (nanoseconds since the
///   epoch), for balances as of a moment;
/// - `v{no}|{version}`: the entry that took token `no` to `version`;
/// - `h{no}|{at}|{version}`: (tokens service) holding `no`'s balance after the token's event
///   `version`;
/// - `c{token}|{hold}`: (tokens service) a closed hold's record, as JSON;
/// - `m{token}|{version}`: (tokens service) the record of the movement that took the token to
///   `version`, in the compact binary form of `token::Movement::to_row`;
/// - `r{token}|{version}`: (tokens service) the movement at `version` was reversed: the
///   reversal's version.
///
/// Numbers are lower-case hexadecimal; those after the first `|` have 16 digits, so that key
/// order is numeric order, and `|` sorts after every digit, so one number's rows never mix with
/// another's. Balances are stored as 16 bytes little-endian, sequence numbers as 8.
pub mod keys {
    use crate::Timestamp;

    /// Nanoseconds since the epoch, clamped to what the keys hold.
    pub fn nanos(at: Timestamp) -> u64 {
        u64::try_from(at.unix_timestamp_nanos().max(0)).unwrap_or(u64::MAX)
    }

    pub fn by_seq(account: u64, seq: u64) -> String {
        format!("s{account:x}|{seq:016x}")
    }

    pub fn by_time(account: u64, at: Timestamp, seq: u64) -> String {
        format!("t{account:x}|{:016x}|{seq:016x}", nanos(at))
    }

    /// The range whose greatest key is the account's balance after entry `seq`.
    pub fn as_of_seq(account: u64, seq: u64) -> (String, String) {
        (format!("s{account:x}|"), by_seq(account, seq))
    }

    /// The range whose greatest key is the account's balance at the end of moment `at`.
    pub fn as_of_time(account: u64, at: Timestamp) -> (String, String) {
        (
            format!("t{account:x}|"),
            format!("t{account:x}|{:016x}|~", nanos(at)),
        )
    }

    pub fn version(token: u64, version: u64) -> String {
        format!("v{token:x}|{version:016x}")
    }

    /// A holding's balance after its token reached `version`: the holding is `token`'s
    /// holder number `holding` (ids hold no `|`).
    pub fn holding(token: &str, holding: u64, at: Timestamp, version: u64) -> String {
        format!("h{token}|{holding:x}|{:016x}|{version:016x}", nanos(at))
    }

    /// The range whose greatest key is the holding's balance at the end of moment `at`.
    pub fn holding_as_of(token: &str, holding: u64, at: Timestamp) -> (String, String) {
        (
            format!("h{token}|{holding:x}|"),
            format!("h{token}|{holding:x}|{:016x}|~", nanos(at)),
        )
    }

    /// A closed hold's record (ids hold no `|`).
    pub fn closed_hold(token: &str, hold: &str) -> String {
        format!("c{token}|{hold}")
    }

    /// The record of the movement that took `token` to `version` (`Movement::to_row`).
    pub fn movement(token: &str, version: u64) -> String {
        format!("m{token}|{version:016x}")
    }

    /// The range of `token`'s movement records after `version` (0: from the first).
    pub fn movements_after(token: &str, version: u64) -> (String, String) {
        (movement(token, version + 1), format!("m{token}|~"))
    }

    /// A reversed movement of `token`: the version of its reversal (8 bytes).
    pub fn reversal(token: &str, version: u64) -> String {
        format!("r{token}|{version:016x}")
    }

    /// The range of `token`'s reversed movements after `version`.
    pub fn reversals_after(token: &str, version: u64) -> (String, String) {
        (reversal(token, version + 1), format!("r{token}|~"))
    }

    pub fn balance_value(balance: i128) -> Vec<u8> {
        balance.to_le_bytes().to_vec()
    }

    pub fn balance_of(value: &[u8]) -> Option<i128> {
        Some(i128::from_le_bytes(value.try_into().ok()?))
    }

    pub fn seq_value(seq: u64) -> Vec<u8> {
        seq.to_le_bytes().to_vec()
    }

    pub fn seq_of(value: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(value.try_into().ok()?))
    }
}

/// An account in one unit: its number in the index and its latest balance.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Account {
    pub no: u64,
    pub balance: i128,
}

/// A token as the journal knows it: its number in the index and its latest version.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TokenSeen {
    pub no: u64,
    pub version: u64,
}

/// The ledger's state: the chain head, how far each subject's stream is recorded, and every
/// account's latest balance. Balances at earlier points and the entries themselves are read from
/// the store ([`keys`] and the log), so memory grows with accounts and subjects, not with
/// history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    head_seq: u64,
    head_hash: [u8; 32],
    /// Per stream ([`stream_of`]), the latest subject version recorded: one number per subject,
    /// however long its history.
    streams: FxHashMap<String, u64>,
    /// `(account, unit)`: its number and latest balance.
    accounts: FxHashMap<(String, String), Account>,
    /// Per unit, the accounts that ever held it.
    holders: FxHashMap<String, Vec<String>>,
    tokens: FxHashMap<Id, TokenSeen>,
    /// The number the next account or token gets.
    next_no: u64,
    /// Index rows of the entries applied since the last [`Journal::take_index`].
    #[serde(skip)]
    index: Vec<(String, Vec<u8>)>,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            head_seq: 0,
            head_hash: GENESIS,
            streams: FxHashMap::default(),
            accounts: FxHashMap::default(),
            holders: FxHashMap::default(),
            tokens: FxHashMap::default(),
            next_no: 1,
            index: Vec::new(),
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
        self.tokens.get(token_id).map_or(0, |t| t.version)
    }

    /// The token's number in the index, if the journal has seen it.
    pub fn token_no(&self, token_id: &str) -> Option<u64> {
        self.tokens.get(token_id).map(|t| t.no)
    }

    /// The account's number in the index and latest balance, if it ever held `unit`.
    pub fn account(&self, account: &str, unit: &str) -> Option<Account> {
        self.accounts
            .get(&(account.to_owned(), unit.to_owned()))
            .copied()
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
            reverses: incoming.reverses.clone(),
            prev_hash: hex::encode(self.head_hash),
            hash: String::new(),
        };
        entry.hash = hex::encode(entry.compute_hash(&self.head_hash));
        Ok(Some(entry))
    }

    /// Applies an entry decided earlier (or read back from the store), and prepares its index
    /// rows.
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
            let next_no = &mut self.next_no;
            let seen = self.tokens.entry(token.clone()).or_insert_with(|| {
                *next_no += 1;
                TokenSeen {
                    no: *next_no - 1,
                    version: 0,
                }
            });
            seen.version = *version;
            self.index
                .push((keys::version(seen.no, *version), keys::seq_value(entry.seq)));
        }
        for p in &entry.postings {
            let amount = p.amount.0 as i128;
            self.move_balance(&p.from, &p.unit, -amount, entry);
            self.move_balance(&p.to, &p.unit, amount, entry);
        }
    }

    fn move_balance(&mut self, account: &str, unit: &str, delta: i128, entry: &Entry) {
        let key = (account.to_owned(), unit.to_owned());
        let (holders, next_no) = (&mut self.holders, &mut self.next_no);
        let state = self.accounts.entry(key).or_insert_with(|| {
            holders
                .entry(unit.to_owned())
                .or_default()
                .push(account.to_owned());
            *next_no += 1;
            Account {
                no: *next_no - 1,
                balance: 0,
            }
        });
        // Amounts are bounded by 10^36, so only an absurd history could reach the bound.
        state.balance = state.balance.saturating_add(delta);
        let value = keys::balance_value(state.balance);
        // One entry may touch an account twice (a posting to itself): the last row wins.
        self.index
            .push((keys::by_seq(state.no, entry.seq), value.clone()));
        self.index
            .push((keys::by_time(state.no, entry.at, entry.seq), value));
    }

    /// The index rows of the entries applied since the last call.
    pub fn take_index(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut rows = std::mem::take(&mut self.index);
        // A key written twice in one entry keeps its last value.
        let mut seen = rustc_hash::FxHashSet::default();
        let mut out = Vec::with_capacity(rows.len());
        while let Some((key, value)) = rows.pop() {
            if seen.insert(key.clone()) {
                out.push((key, value));
            }
        }
        out.reverse();
        out
    }

    /// The latest balance of `account` in `unit`.
    pub fn balance(&self, account: &str, unit: &str) -> i128 {
        self.account(account, unit).map_or(0, |a| a.balance)
    }

    /// Every account that ever held `unit`.
    pub fn accounts_of(&self, unit: &str) -> &[String] {
        self.holders.get(unit).map_or(&[], Vec::as_slice)
    }

    /// Every account and unit, with its latest balance.
    pub fn all_balances(&self) -> impl Iterator<Item = (&str, &str, i128)> {
        self.accounts
            .iter()
            .map(|((a, u), state)| (a.as_str(), u.as_str(), state.balance))
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

/// Walks entries in stored order, recomputing each hash, one at a time: what it holds does not
/// grow with the chain.
#[derive(Debug, Clone)]
pub struct Verifier {
    prev: [u8; 32],
    expected: u64,
    broken: Option<Broken>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            prev: GENESIS,
            expected: 1,
            broken: None,
        }
    }
}

impl Verifier {
    /// Checks the next entry; false once the chain is broken (later entries are not looked at).
    pub fn push(&mut self, entry: &Entry) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let problem = if entry.seq != self.expected {
            Some("sequence_gap")
        } else if entry.prev_hash != hex::encode(self.prev) {
            Some("prev_hash_mismatch")
        } else {
            let hash = entry.compute_hash(&self.prev);
            if entry.hash != hex::encode(hash) {
                Some("hash_mismatch")
            } else {
                self.prev = hash;
                None
            }
        };
        match problem {
            Some(problem) => {
                self.broken = Some(Broken {
                    seq: entry.seq,
                    problem: problem.to_owned(),
                });
                false
            }
            None => {
                self.expected += 1;
                true
            }
        }
    }

    pub fn finish(self) -> Verification {
        Verification {
            valid: self.broken.is_none(),
            entries_checked: self.expected - 1,
            head_seq: self.expected - 1,
            head_hash: hex::encode(self.prev),
            first_broken: self.broken,
        }
    }
}

/// Verifies `entries` in stored order; stops at the first broken one.
pub fn verify(entries: impl IntoIterator<Item = Entry>) -> Verification {
    let mut verifier = Verifier::default();
    for entry in entries {
        if !verifier.push(&entry) {
            break;
        }
    }
    verifier.finish()
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
            reverses: None,
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

    /// The postings of a token event `change`.
    fn postings_of(change: Change) -> Vec<(String, String, u128)> {
        postings_for(&TokenEvent {
            at: datetime!(2026-01-01 00:00 UTC),
            actor: "agent".into(),
            change,
        })
        .into_iter()
        .map(|p| (p.from, p.to, p.amount.0))
        .collect()
    }

    #[test]
    fn each_share_class_has_accounts_of_its_own() {
        let a = |s: &str| s.to_owned();
        let class = Some(Id::from("B"));
        assert_eq!(
            postings_of(Change::Transferred {
                token_id: "tok_1".into(),
                from: "x".into(),
                to: "y".into(),
                amount: Amount(5),
                forced: false,
                reason: None,
                approval_id: None,
                class: class.clone(),
            }),
            [(a("investor:x:B"), a("investor:y:B"), 5)]
        );
        assert_eq!(
            postings_of(Change::Converted {
                token_id: "tok_1".into(),
                investor_id: "x".into(),
                from_class: None,
                to_class: class.clone(),
                amount: Amount(7),
                reason: "resolution".into(),
            }),
            [(a("investor:x"), a("investor:x:B"), 7)]
        );
        assert_eq!(
            postings_of(Change::HoldPosted {
                token_id: "tok_1".into(),
                hold_id: "h".into(),
                from: "x".into(),
                to: "y".into(),
                amount: Amount(3),
                released: Amount(1),
                payment: None,
                class,
            }),
            [
                (a("held:x:B"), a("investor:y:B"), 3),
                (a("held:x:B"), a("investor:x:B"), 1)
            ]
        );
        for (account, holder) in [
            ("investor:x", Some("x")),
            ("investor:x:B", Some("x")),
            ("held:x:B", Some("x")),
            ("issuance:tok_1", None),
            ("withheld:x", None),
        ] {
            assert_eq!(account_holder(account), holder, "{account}");
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
    fn each_entry_leaves_the_balances_after_it_as_index_rows() {
        let (mut journal, _) = journal_of(3);
        assert_eq!(journal.balance("investor:a", "tok_1"), 30);
        assert_eq!(journal.balance("issuance:tok_1", "tok_1"), -30);
        let a = journal.account("investor:a", "tok_1").expect("numbered").no;
        let issuance = journal
            .account("issuance:tok_1", "tok_1")
            .expect("numbered")
            .no;
        assert_ne!(a, issuance, "each account in a unit has its own number");
        assert_eq!(journal.account("investor:a", "EUR").map(|a| a.no), None);
        let rows: FxHashMap<String, Vec<u8>> = journal.take_index().into_iter().collect();
        for (seq, balance) in [(1u64, 10i128), (2, 20), (3, 30)] {
            assert_eq!(
                keys::balance_of(&rows[&keys::by_seq(a, seq)]),
                Some(balance)
            );
            let at = datetime!(2026-01-01 00:00 UTC);
            let value = &rows[&keys::by_time(a, at, seq)];
            assert_eq!(keys::balance_of(value), Some(balance));
        }
        assert_eq!(
            keys::balance_of(&rows[&keys::by_seq(issuance, 2)]),
            Some(-20)
        );
        assert!(journal.take_index().is_empty(), "taken once");
    }

    #[test]
    fn index_keys_sort_in_numeric_order_and_ranges_bound_them() {
        let (low, high) = keys::as_of_seq(1, 10);
        let nine = keys::by_seq(1, 9);
        let ten = keys::by_seq(1, 10);
        let eleven = keys::by_seq(1, 11);
        let big = keys::by_seq(1, 0x100);
        assert!(low < nine && nine < ten && ten <= high && high < eleven && eleven < big);
        // Accounts whose numbers start alike are outside each other's ranges.
        for other in [0x10, 0x1a, 0x100] {
            let key = keys::by_seq(other, 1);
            assert!(!(low <= key && key <= high), "{key}");
        }
        let at = datetime!(2026-01-01 00:00 UTC);
        let (low, high) = keys::as_of_time(1, at);
        let same_moment = keys::by_time(1, at, 99);
        let later = keys::by_time(1, at + time::Duration::nanoseconds(1), 1);
        assert!(low < same_moment && same_moment <= high && high < later);
        let (low, high) = keys::holding_as_of("tok_1", 1, at);
        let same_moment = keys::holding("tok_1", 1, at, u64::MAX);
        assert!(low < same_moment && same_moment <= high);
        assert!(keys::holding("tok_1", 1, at + time::Duration::nanoseconds(1), 0) > high);
        for other in [
            keys::holding("tok_1", 0x10, at, 0),
            keys::holding("tok_10", 1, at, 0),
            keys::holding("tok_", 11, at, 0),
        ] {
            assert!(other < low || other > high, "{other} is another holding's");
        }
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
        let token = journal.token_no("tok_1").expect("numbered");
        let rows: FxHashMap<String, Vec<u8>> = journal.take_index().into_iter().collect();
        assert_eq!(keys::seq_of(&rows[&keys::version(token, 2)]), Some(2));
        assert!(!rows.contains_key(&keys::version(token, 9)));
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

    #[test]
    fn a_reversing_entry_names_what_it_reverses_in_its_hashed_bytes() {
        let journal = Journal::default();
        let mut reversing = incoming("ev9", 7, vec![post("investor:a", "issuance:tok_1", 10)]);
        reversing.event_type = "libertum.token.reversed.v1".into();
        reversing.reverses = Some(Reversed {
            token_id: "tok_1".into(),
            version: 3,
        });
        let entry = journal.decide(&reversing).unwrap().expect("an entry");
        let text = String::from_utf8(entry.canonical_bytes()).expect("utf-8");
        assert!(
            text.ends_with(r#""amount":10}],"reverses":{"token_id":"tok_1","version":3}}"#),
            "{text}"
        );
        // Naming another movement is another hash: what is reversed cannot be changed quietly.
        let mut other = entry.clone();
        other.reverses = Some(Reversed {
            token_id: "tok_1".into(),
            version: 4,
        });
        assert_ne!(other.compute_hash(&GENESIS), entry.compute_hash(&GENESIS));
        assert!(!verify([other]).valid);
    }
}
