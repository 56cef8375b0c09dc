//! Balances at an earlier moment, read from the service's index (each holder's balance after
//! each movement, see `token::keys`) rather than from memory.

use libertum_domain::{
    Amount, Timestamp,
    token::{self, RecordBalances, keys},
};
use libertum_platform::ApiError;
use libertum_store::Engine;

use crate::TokensState;

/// The positive balances of `token_id`'s holders at the end of `at`, sorted by investor, with
/// the moment they were read; `None` if there is no such token.
///
/// The moment is taken while the state is held: every event committed by then is in the index,
/// and any later one is stamped later, so a record date up to that moment reads complete.
pub async fn balances_as_of(
    engine: &Engine<TokensState>,
    token_id: &str,
    at: Timestamp,
) -> Result<Option<RecordBalances>, ApiError> {
    let (holders, taken_at) = {
        let state = engine.read().await;
        if state.0.token(token_id).is_none() {
            return Ok(None);
        }
        (
            state.0.holders_ever(token_id),
            time::OffsetDateTime::now_utc(),
        )
    };
    // The token's index rows are in its partition's store, and those of what it did before
    // the service's writes were partitioned in the registry's (the one log there was): the
    // later row of the two is the balance.
    let partition = engine.partition_of_key(token_id);
    let mut stores = vec![engine.store_of(partition)];
    if partition != 0 {
        stores.push(engine.store_of(0));
    }
    let mut balances = Vec::with_capacity(holders.len());
    for (investor, no) in holders {
        let (low, high) = keys::holding_as_of(token_id, no, at);
        let mut row: Option<(String, Vec<u8>)> = None;
        for store in &stores {
            let found = store
                .index_last(&low, &high)
                .await
                .map_err(ApiError::unavailable)?;
            if let Some(found) = found
                && row.as_ref().is_none_or(|(key, _)| found.0 > *key)
            {
                row = Some(found);
            }
        }
        let Some((key, value)) = row else { continue };
        let balance = keys::balance_of(&value)
            .ok_or_else(|| ApiError::unavailable(format!("index row {key} is unreadable")))?;
        if balance > 0 {
            balances.push((investor, Amount(balance.unsigned_abs())));
        }
    }
    Ok(Some(token::RecordBalances { taken_at, balances }))
}
