//! What the ledger reads from its store rather than from memory: the entries (its log, where an
//! entry's sequence number is its position) and the balances at earlier points (index rows, see
//! `ledger::keys`).

use libertum_domain::{
    Amount,
    ledger::{self, AsOf, keys},
};
use libertum_events::CloudEvent;
use libertum_platform::ApiError;
use libertum_store::{Engine, EventStore};

use crate::state::LedgerState;

/// How many entries one read of the log takes.
const CHUNK: usize = 1_024;

/// Decodes an entry as stored.
pub fn entry(bytes: &[u8]) -> Option<ledger::Entry> {
    serde_json::from_slice::<CloudEvent>(bytes)
        .ok()?
        .data::<ledger::Entry>()
        .ok()
}

/// The entry with sequence number `seq`.
pub async fn entry_at(store: &dyn EventStore, seq: u64) -> Result<Option<ledger::Entry>, ApiError> {
    let Some(before) = seq.checked_sub(1) else {
        return Ok(None);
    };
    let read = store.read(before, 1).await.map_err(ApiError::unavailable)?;
    match read.first() {
        Some((position, bytes)) if *position == seq => entry(bytes)
            .map(Some)
            .ok_or_else(|| ApiError::unavailable(format!("entry {seq} is unreadable"))),
        _ => Ok(None),
    }
}

/// Up to `limit` entries after sequence number `after` that `matches`, reading the log in
/// chunks, and the cursor to continue from if there are more.
pub async fn entries(
    store: &dyn EventStore,
    mut after: u64,
    limit: usize,
    matches: impl Fn(&ledger::Entry) -> bool,
) -> Result<(Vec<ledger::Entry>, Option<u64>), ApiError> {
    let mut found = Vec::with_capacity(limit);
    loop {
        let chunk = store
            .read(after, CHUNK)
            .await
            .map_err(ApiError::unavailable)?;
        if chunk.is_empty() {
            return Ok((found, None));
        }
        for (position, bytes) in chunk {
            let entry = entry(&bytes)
                .ok_or_else(|| ApiError::unavailable(format!("entry {position} is unreadable")))?;
            if !matches(&entry) {
                after = position;
                continue;
            }
            if found.len() == limit {
                return Ok((found, Some(position - 1)));
            }
            found.push(entry);
            after = position;
        }
    }
}

/// A point to read balances at, with what memory says now.
pub struct Reading {
    point: AsOf,
}

impl Reading {
    /// `point`, knowing the journal's head: a sequence number at or past it is the latest.
    pub fn new(point: AsOf, head: u64) -> Self {
        let point = match point {
            AsOf::Seq(seq) if seq >= head => AsOf::Latest,
            other => other,
        };
        Reading { point }
    }

    /// The balance at this point of an account the journal knows as `account` (its number and
    /// latest balance; `None`: it never held the unit).
    pub async fn balance(
        &self,
        store: &dyn EventStore,
        account: Option<ledger::Account>,
    ) -> Result<i128, ApiError> {
        let Some(account) = account else {
            return Ok(0);
        };
        let (low, high) = match self.point {
            AsOf::Latest => return Ok(account.balance),
            AsOf::Seq(0) => return Ok(0),
            AsOf::Seq(seq) => keys::as_of_seq(account.no, seq),
            AsOf::Time(at) => keys::as_of_time(account.no, at),
        };
        let row = store
            .index_last(&low, &high)
            .await
            .map_err(ApiError::unavailable)?;
        match row {
            None => Ok(0),
            Some((key, value)) => keys::balance_of(&value)
                .ok_or_else(|| ApiError::unavailable(format!("index row {key} is unreadable"))),
        }
    }
}

/// The sequence number of the entry that took `token_id` to `version`.
pub async fn seq_of_token_version(
    engine: &Engine<LedgerState>,
    token_id: &str,
    version: u64,
) -> Result<Option<u64>, ApiError> {
    let store = engine.store().as_ref();
    let Some(token) = engine.read().await.journal.token_no(token_id) else {
        return Ok(None);
    };
    let key = keys::version(token, version);
    let row = store
        .index_last(&key, &key)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(row.and_then(|(_, value)| keys::seq_of(&value)))
}

/// A token's cap table at `point`: total supply (minted minus redeemed) and every investor's
/// positive balance, sorted by investor.
pub async fn cap_table(
    engine: &Engine<LedgerState>,
    token_id: &str,
    point: AsOf,
) -> Result<(Amount, Vec<(String, Amount)>), ApiError> {
    let issuance = format!("issuance:{token_id}");
    let redemption = format!("redemption:{token_id}");
    // What memory knows, taken at once; the store is read without holding the state.
    let (reading, accounts) = {
        let state = engine.read().await;
        let journal = &state.journal;
        let mut accounts: Vec<(String, Option<ledger::Account>)> = journal
            .accounts_of(token_id)
            .iter()
            .filter(|a| a.starts_with("investor:") || a.starts_with("held:"))
            .map(|a| (a.clone(), journal.account(a, token_id)))
            .collect();
        for account in [&issuance, &redemption] {
            accounts.push((account.clone(), journal.account(account, token_id)));
        }
        (Reading::new(point, journal.head().0), accounts)
    };
    let store = engine.store().as_ref();
    let (mut minted, mut redeemed) = (0i128, 0i128);
    // An investor's holding is their account plus what waits in their held account (pending
    // holds), as the tokens service counts it.
    let mut holdings: std::collections::BTreeMap<String, i128> = Default::default();
    for (account, known) in accounts {
        let balance = reading.balance(store, known).await?;
        if account == issuance {
            minted = -balance;
        } else if account == redemption {
            redeemed = balance;
        } else if let Some(investor) = ledger::account_holder(&account) {
            *holdings.entry(investor.to_owned()).or_default() += balance;
        }
    }
    let holders = holdings
        .into_iter()
        .filter(|(_, balance)| *balance > 0)
        .map(|(investor, balance)| (investor, Amount(balance.unsigned_abs())))
        .collect();
    Ok((Amount((minted - redeemed).max(0).unsigned_abs()), holders))
}
