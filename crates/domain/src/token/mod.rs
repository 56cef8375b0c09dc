//! Token classes, investors, movements under compliance rules, cap tables and distributions.
//!
//! [`Book`] is the whole state of the tokens service. [`Book::decide`] turns a command into events
//! or refuses it with a stable reason code, changing nothing; [`Book::apply`] applies an event.
//! Replaying the events rebuilds the same book.

pub mod class;
mod compliance;
mod distribution;
mod hold;
mod model;
mod reversal;

use rustc_hash::FxHashMap;

pub use class::{ClassPosition, ClassRules, ClassState, DEFAULT_CLASS, MAX_CLASSES, ShareClass};
pub use compliance::{CHECK_ORDER, Rules};
pub use distribution::{Allocation, mul_div_rem, split};
pub use hold::{
    CashLeg, EXPIRE_AT_ONCE, Hold, HoldRecord, HoldStatus, MAX_HOLD_SECONDS, PaymentConfirmed,
};
pub use model::*;
pub use reversal::{Movement, MovementKind};

use crate::{Amount, Error, ErrorKind, Id, Result, Timestamp};

/// Who asks, and when.
#[derive(Debug, Clone)]
pub struct Context {
    pub now: Timestamp,
    pub actor: Id,
}

/// The tokens service's state: what it knows of assets, its token classes and investors.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Book {
    assets: FxHashMap<Id, AssetState>,
    /// The newest position of each asset's stream observed: older news of an asset (a relay
    /// publishing its backlog again) never overrides newer.
    asset_positions: FxHashMap<Id, u64>,
    tokens: FxHashMap<Id, Token>,
    token_order: Vec<Id>,
    symbols: FxHashMap<String, Id>,
    investors: FxHashMap<Id, Investor>,
    investor_order: Vec<Id>,
    /// Who each identity reference is: one person is one investor, so that their maximum
    /// balance and limits count once.
    identities: FxHashMap<String, Id>,
    /// Index rows of the events applied since the last [`Book::take_index`]: each holder's
    /// balance after each movement, for balances as of an earlier moment (see [`keys`]). The
    /// history is on disk, not here.
    #[serde(skip)]
    index: Vec<(String, Vec<u8>)>,
    /// Each holding's number in the index, `(token, investor) -> no`, counted per token in
    /// the order its holdings first moved (so each token's numbers follow from its own events
    /// alone, whatever order a replica applies the partitions' logs in).
    holder_nos: FxHashMap<(Id, Id), u64>,
    /// How many holdings of each token are numbered.
    holders_numbered: FxHashMap<Id, u64>,
    /// Token classes claimed in the registry and not opened yet in their partition, with the
    /// claim's actor and time.
    #[serde(default)]
    claims: FxHashMap<Id, (TokenSpec, Id, Timestamp)>,
    /// Each asset's issuer, as registered.
    #[serde(default)]
    issuers: FxHashMap<Id, AssetIssuer>,
    /// Every distribution paid, per token, in order.
    paid: FxHashMap<Id, Vec<PaidDistribution>>,
    /// The deadline of every pending hold: `(expires_at, token, hold)`, soonest first.
    #[serde(default)]
    hold_deadlines: std::collections::BTreeSet<(Timestamp, Id, Id)>,
}

/// A distribution as paid: what was asked and who got how much.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PaidDistribution {
    pub spec: DistributionSpec,
    pub allocations: Vec<Allocation>,
    pub paid_at: Timestamp,
    pub paid_by: Id,
}

/// Keys of the tokens service's index rows: `ledger::keys::holding`, a holding's balance after
/// each of its token's events that moved it.
pub use crate::ledger::keys;

impl Book {
    pub fn token(&self, id: &str) -> Option<&Token> {
        self.tokens.get(id)
    }

    /// The distributions paid to holders of `token_id`, oldest first.
    pub fn distributions(&self, token_id: &str) -> &[PaidDistribution] {
        self.paid.get(token_id).map_or(&[], Vec::as_slice)
    }

    pub fn investor(&self, id: &str) -> Option<&Investor> {
        self.investors.get(id)
    }

    /// The issuer of asset `id`, as the assets service registered it.
    pub fn asset_issuer(&self, id: &str) -> Option<&AssetIssuer> {
        self.issuers.get(id)
    }

    pub fn asset_state(&self, id: &str) -> Option<AssetState> {
        self.assets.get(id).copied()
    }

    pub fn tokens(&self) -> impl Iterator<Item = &Token> {
        self.token_order.iter().map(|id| &self.tokens[id])
    }

    pub fn investors(&self) -> impl Iterator<Item = &Investor> {
        self.investor_order.iter().map(|id| &self.investors[id])
    }

    /// Everyone whose balance of `token_id` ever moved, with their holding's number in the
    /// index, sorted by investor: whose history a balance as of an earlier moment is read from.
    pub fn holders_ever(&self, token_id: &str) -> Vec<(Id, u64)> {
        // (the numbers are per token: see `keys::holding`)
        let Some(token) = self.tokens.get(token_id) else {
            return Vec::new();
        };
        let mut holders: Vec<(Id, u64)> = token
            .holdings
            .keys()
            .filter_map(|investor| {
                let no = self
                    .holder_nos
                    .get(&(token.spec.id.clone(), investor.clone()))?;
                Some((investor.clone(), *no))
            })
            .collect();
        holders.sort();
        holders
    }

    /// The pending holds past their deadline at `now`, soonest first, as the commands that
    /// expire them: per token at most [`EXPIRE_AT_ONCE`], and in all at most ten times that,
    /// so that a backlog (holds due while no process ran) is worked off round by round
    /// instead of being read whole at every look.
    pub fn expired_holds(&self, now: Timestamp) -> Vec<Command> {
        let mut by_token: std::collections::BTreeMap<&Id, Vec<Id>> = Default::default();
        for (_, token, hold) in self
            .hold_deadlines
            .iter()
            .take_while(|(deadline, ..)| *deadline <= now)
            .take(10 * EXPIRE_AT_ONCE)
        {
            let ids = by_token.entry(token).or_default();
            if ids.len() < EXPIRE_AT_ONCE {
                ids.push(hold.clone());
            }
        }
        by_token
            .into_iter()
            .map(|(token_id, hold_ids)| Command::ExpireHolds {
                token_id: token_id.clone(),
                hold_ids,
            })
            .collect()
    }

    /// The index rows of the events applied since the last call.
    pub fn take_index(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.index)
    }

    /// Refuses a second investor for one identity reference.
    fn identity_free(&self, profile: &InvestorProfile, id: &Id) -> Result<()> {
        match self.identities.get(profile.identity_ref.trim()) {
            Some(other) if other != id => Err(Error::conflict(
                "duplicate_identity_ref",
                "another investor is registered with this identity_ref",
            )
            .at("identity_ref")),
            _ => Ok(()),
        }
    }

    /// What the asset's status allows: while it is suspended nothing moves; once it is
    /// retired, only redemptions (the holders bought out). Freezes and pauses stay possible.
    fn asset_allows(&self, token: &Token, operation: &Operation) -> Result<()> {
        let moves = operation.moves();
        match self.assets.get(&token.spec.asset_id) {
            Some(AssetState::Suspended)
                if moves || matches!(operation, Operation::Redeem { .. }) =>
            {
                Err(asset_suspended(token))
            }
            Some(AssetState::Retired) if moves => Err(Error::refused(
                "asset_retired",
                format!(
                    "the asset of {} is retired: its tokens can only be redeemed",
                    token.spec.symbol
                ),
            )),
            _ => Ok(()),
        }
    }

    fn existing_token(&self, id: &str) -> Result<&Token> {
        self.tokens.get(id).ok_or_else(|| {
            Error::not_found("token_not_found", format!("token {id} does not exist"))
        })
    }

    fn existing_investor(&self, id: &str, field: &'static str) -> Result<&Investor> {
        self.investors.get(id).ok_or_else(|| {
            Error::not_found(
                "investor_not_found",
                format!("investor {id} does not exist"),
            )
            .at(field)
        })
    }

    /// Whether the token class `spec` may be created: valid, its asset approved and not
    /// tokenized (nor claimed), its id and symbol free.
    fn may_create(&self, spec: &TokenSpec) -> Result<()> {
        spec.validate()?;
        match self.assets.get(&spec.asset_id) {
            Some(AssetState::Approved) => {}
            Some(AssetState::Tokenized) => {
                return Err(Error::conflict(
                    "asset_already_tokenized",
                    format!("asset {} already has a token class", spec.asset_id),
                )
                .at("asset_id"));
            }
            _ => {
                return Err(Error::conflict("asset_not_approved", format!("asset {} is not approved for tokenization (or its approval has not reached this service yet)", spec.asset_id)).at("asset_id"));
            }
        }
        if self.tokens.contains_key(&spec.id) || self.claims.contains_key(&spec.id) {
            return Err(Error::conflict(
                "token_exists",
                format!("token {} already exists", spec.id),
            ));
        }
        if self.symbols.contains_key(&spec.symbol) {
            return Err(Error::conflict(
                "symbol_taken",
                format!("symbol {} is taken", spec.symbol),
            )
            .at("symbol"));
        }
        Ok(())
    }

    /// A claimed token class as it will be once opened (its creation time the claim's).
    pub fn claimed_token(&self, id: &str) -> Option<Token> {
        self.claims
            .get(id)
            .map(|(spec, _, at)| Token::new(spec.clone(), *at))
    }

    /// The token classes claimed and not opened yet, as the commands that open them, with the
    /// claim's actor: what the owner of each one's partition owes.
    pub fn unopened(&self) -> Vec<(Command, Id)> {
        let mut claims: Vec<_> = self.claims.values().collect();
        claims.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        claims
            .into_iter()
            .map(|(spec, actor, at)| {
                (
                    Command::OpenToken {
                        spec: spec.clone(),
                        claimed_at: *at,
                    },
                    actor.clone(),
                )
            })
            .collect()
    }

    /// Decides what `command` changes, without changing anything.
    /// Decides a batch of `token_id`'s operations, in order, each against the state the ones
    /// before it leave (on a copy of the token, so a refusal of the whole batch leaves the book
    /// untouched). Returns the events of the operations that apply and each operation's
    /// outcome: `None` when it applies, its refusal otherwise. [`BatchMode::AllOrNothing`]
    /// refuses the whole batch at the first refusal, naming the operation in the error's
    /// field (`operations[i].…`).
    pub fn decide_batch(
        &self,
        token_id: &Id,
        operations: &[Operation],
        mode: BatchMode,
        ctx: &Context,
    ) -> Result<(Vec<Event>, Vec<Option<Error>>)> {
        if operations.is_empty() || operations.len() > MAX_BATCH {
            return Err(Error::invalid(
                "operations",
                format!("a batch holds 1 to {MAX_BATCH} operations"),
            ));
        }
        let mut scratch = self.existing_token(token_id)?.clone();
        let mut events = Vec::with_capacity(operations.len());
        let mut outcomes = Vec::with_capacity(operations.len());
        for (i, operation) in operations.iter().enumerate() {
            let decided = compliance::agent_allowed(&scratch, operation.name(), &ctx.actor)
                .and_then(|()| self.asset_allows(&scratch, operation))
                .and_then(|()| compliance::decide(&scratch, &self.investors, operation, ctx));
            match decided {
                Ok(change) => {
                    apply_to_token(&mut scratch, &change, ctx.now, &ctx.actor);
                    events.push(Event {
                        at: ctx.now,
                        actor: ctx.actor.clone(),
                        change,
                    });
                    outcomes.push(None);
                }
                Err(e) if mode == BatchMode::AllOrNothing => {
                    let field = match &e.field {
                        Some(f) => format!("operations[{i}].{f}"),
                        None => format!("operations[{i}]"),
                    };
                    return Err(Error {
                        message: format!("operation {i}: {}", e.message),
                        ..e
                    }
                    .at(field));
                }
                Err(e) => outcomes.push(Some(e)),
            }
        }
        Ok((events, outcomes))
    }

    pub fn decide(&self, command: &Command, ctx: &Context) -> Result<Vec<Event>> {
        let event = |change| Event {
            at: ctx.now,
            actor: ctx.actor.clone(),
            change,
        };
        match command {
            Command::ObserveAsset {
                asset_id,
                state,
                sequence,
            } => {
                let known = self.asset_positions.get(asset_id).copied().unwrap_or(0);
                let older = *sequence != 0 && *sequence <= known;
                let same = self.assets.get(asset_id) == Some(state);
                // Older news, or the same news again: nothing to do. Newer news of the same
                // state is recorded for its position, so that older news cannot slip in after it.
                if older || (same && *sequence <= known) {
                    return Ok(Vec::new());
                }
                Ok(vec![event(Change::AssetObserved {
                    asset_id: asset_id.clone(),
                    state: *state,
                    sequence: *sequence,
                })])
            }
            Command::ObserveAssetIssuer {
                asset_id,
                issuer,
                sequence,
            } => {
                let known = self.asset_positions.get(asset_id).copied().unwrap_or(0);
                let older = *sequence != 0 && *sequence <= known;
                if older || self.issuers.get(asset_id) == Some(issuer) {
                    return Ok(Vec::new());
                }
                Ok(vec![event(Change::AssetIssuerObserved {
                    asset_id: asset_id.clone(),
                    issuer: issuer.clone(),
                    sequence: *sequence,
                })])
            }
            Command::CreateToken(spec) => {
                self.may_create(spec)?;
                Ok(vec![event(Change::TokenCreated {
                    spec: spec.clone(),
                    created_at: None,
                })])
            }
            Command::ClaimToken(spec) => {
                self.may_create(spec)?;
                Ok(vec![event(Change::TokenClaimed { spec: spec.clone() })])
            }
            Command::OpenToken { spec, claimed_at } => {
                if self.tokens.contains_key(&spec.id) {
                    return Err(Error::conflict(
                        "token_exists",
                        format!("token {} already exists", spec.id),
                    ));
                }
                if self
                    .claims
                    .get(&spec.id)
                    .is_none_or(|(claimed, ..)| claimed != spec)
                {
                    return Err(Error::conflict(
                        "token_not_claimed",
                        format!("token {} was not claimed as such", spec.id),
                    ));
                }
                Ok(vec![event(Change::TokenCreated {
                    spec: spec.clone(),
                    created_at: Some(*claimed_at),
                })])
            }
            Command::UpdateRules {
                token_id,
                expected_version,
                rules,
            } => {
                let token = self.existing_token(token_id)?;
                compliance::agent_allowed(token, "update_rules", &ctx.actor)?;
                if token.version != *expected_version {
                    return Err(stale("token", token_id, token.version));
                }
                rules.validate()?;
                Ok(vec![event(Change::RulesUpdated {
                    token_id: token_id.clone(),
                    rules: rules.clone(),
                })])
            }
            Command::RegisterInvestor { id, profile } => {
                if self.investors.contains_key(id) {
                    return Err(Error::conflict(
                        "investor_exists",
                        format!("investor {id} already exists"),
                    ));
                }
                profile.validate()?;
                self.identity_free(profile, id)?;
                Ok(vec![event(Change::InvestorRegistered {
                    investor_id: id.clone(),
                    profile: profile.clone(),
                })])
            }
            Command::UpdateInvestor {
                id,
                expected_version,
                profile,
            } => {
                let investor = self.existing_investor(id, "investor_id")?;
                if investor.version != *expected_version {
                    return Err(stale("investor", id, investor.version));
                }
                profile.validate()?;
                self.identity_free(profile, id)?;
                Ok(vec![event(Change::InvestorUpdated {
                    investor_id: id.clone(),
                    profile: profile.clone(),
                })])
            }
            Command::Operate {
                token_id,
                operation,
            } => {
                let token = self.existing_token(token_id)?;
                compliance::agent_allowed(token, operation.name(), &ctx.actor)?;
                self.asset_allows(token, operation)?;
                let change = compliance::decide(token, &self.investors, operation, ctx)?;
                Ok(vec![event(change)])
            }
            Command::Batch {
                token_id,
                operations,
                mode,
            } => self
                .decide_batch(token_id, operations, *mode, ctx)
                .map(|(events, _)| events),
            Command::ExpireHolds { token_id, hold_ids } => {
                let token = self.existing_token(token_id)?;
                let changes = hold::expire(token, hold_ids, ctx.now);
                if changes.is_empty() {
                    return Err(Error::conflict(
                        "nothing_to_expire",
                        "none of these holds is pending past its deadline",
                    ));
                }
                Ok(changes.into_iter().map(event).collect())
            }
            Command::Distribute {
                token_id,
                distribution,
                record_balances,
            } => {
                let token = self.existing_token(token_id)?;
                compliance::agent_allowed(token, "distribute", &ctx.actor)?;
                distribution.validate(ctx.now)?;
                if distribution.record_date > record_balances.taken_at {
                    return Err(Error::invalid(
                        "record_date",
                        "record_date must not be in the future",
                    ));
                }
                if token.distributions.contains(&distribution.id) {
                    return Err(Error::conflict(
                        "distribution_exists",
                        format!("distribution {} was already paid", distribution.id),
                    ));
                }
                if distribution.currency != token.spec.currency {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        "currency_mismatch",
                        format!(
                            "{} pays in {}, the currency of its price, not {}",
                            token.spec.symbol, token.spec.currency, distribution.currency
                        ),
                    )
                    .at("currency"));
                }
                if token.paused {
                    return Err(Error::refused(
                        "token_paused",
                        format!(
                            "token {} is paused: nothing is paid while it is",
                            token.spec.symbol
                        ),
                    ));
                }
                if self.assets.get(&token.spec.asset_id) == Some(&AssetState::Suspended) {
                    return Err(asset_suspended(token));
                }
                // The same payment asked twice (a client retrying without an Idempotency-Key)
                // must not pay twice.
                let paid = self.paid.get(token_id).map_or(&[][..], Vec::as_slice);
                if let Some(earlier) = paid.iter().find(|p| {
                    p.spec.record_date == distribution.record_date
                        && p.spec.currency == distribution.currency
                }) {
                    return Err(Error::conflict(
                        "duplicate_distribution",
                        format!(
                            "distribution {} already paid {} {} to the holders at this record date",
                            earlier.spec.id, earlier.spec.total, earlier.spec.currency
                        ),
                    )
                    .at("record_date"));
                }
                let mut holdings: Vec<(Id, u128)> = record_balances
                    .balances
                    .iter()
                    .filter(|(_, b)| !b.is_zero())
                    .map(|(id, b)| (id.clone(), b.0))
                    .collect();
                // The remainder goes by investor order, whatever order the balances came in.
                holdings.sort();
                if holdings.is_empty() {
                    return Err(Error::conflict(
                        "no_holders",
                        "the token had no holders at the record date",
                    )
                    .at("record_date"));
                }
                let mut allocations = split(distribution.total.0, &holdings);
                // A fully frozen holder's share is computed like anyone's (no one else gets
                // more), but withheld: it goes to a withheld account until the freeze is lifted.
                for allocation in &mut allocations {
                    allocation.withheld = token
                        .holding(&allocation.investor_id)
                        .is_some_and(|h| h.frozen);
                }
                Ok(vec![event(Change::DistributionPaid {
                    token_id: token_id.clone(),
                    distribution: distribution.clone(),
                    allocations,
                })])
            }
        }
    }

    /// Applies an event decided earlier; replaying the log calls only this.
    pub fn apply(&mut self, event: &Event) {
        match &event.change {
            Change::AssetObserved {
                asset_id,
                state,
                sequence,
            } => {
                self.assets.insert(asset_id.clone(), *state);
                if *sequence != 0 {
                    self.asset_positions.insert(asset_id.clone(), *sequence);
                }
            }
            Change::AssetIssuerObserved {
                asset_id,
                issuer,
                sequence,
            } => {
                self.issuers.insert(asset_id.clone(), issuer.clone());
                if *sequence != 0 {
                    self.asset_positions.insert(asset_id.clone(), *sequence);
                }
            }
            Change::TokenClaimed { spec } => {
                self.assets
                    .insert(spec.asset_id.clone(), AssetState::Tokenized);
                self.symbols.insert(spec.symbol.clone(), spec.id.clone());
                self.claims.insert(
                    spec.id.clone(),
                    (spec.clone(), event.actor.clone(), event.at),
                );
            }
            Change::TokenCreated { spec, created_at } => {
                self.claims.remove(&spec.id);
                self.assets
                    .insert(spec.asset_id.clone(), AssetState::Tokenized);
                self.symbols.insert(spec.symbol.clone(), spec.id.clone());
                // In id order (ids grow with time): the same order on every replica, whatever
                // order it applied the partitions' logs in.
                let at = self
                    .token_order
                    .binary_search(&spec.id)
                    .unwrap_or_else(|at| at);
                self.token_order.insert(at, spec.id.clone());
                self.tokens.insert(
                    spec.id.clone(),
                    Token::new(spec.clone(), created_at.unwrap_or(event.at)),
                );
            }
            Change::InvestorRegistered {
                investor_id,
                profile,
            } => {
                self.identities
                    .insert(profile.identity_ref.trim().to_owned(), investor_id.clone());
                self.investor_order.push(investor_id.clone());
                self.investors.insert(
                    investor_id.clone(),
                    Investor {
                        id: investor_id.clone(),
                        profile: profile.clone(),
                        version: 1,
                        created_at: event.at,
                        updated_at: event.at,
                    },
                );
            }
            Change::InvestorUpdated {
                investor_id,
                profile,
            } => {
                if let Some(investor) = self.investors.get_mut(investor_id) {
                    let before = investor.profile.identity_ref.trim();
                    if self.identities.get(before) == Some(investor_id) {
                        self.identities.remove(before);
                    }
                    self.identities
                        .insert(profile.identity_ref.trim().to_owned(), investor_id.clone());
                    investor.profile = profile.clone();
                    investor.version += 1;
                    investor.updated_at = event.at;
                }
            }
            change => {
                let Some(token_id) = change.token_id() else {
                    return;
                };
                let Some(token) = self.tokens.get_mut(token_id) else {
                    return;
                };
                let closing = match change {
                    Change::HoldPosted { hold_id, .. }
                    | Change::HoldVoided { hold_id, .. }
                    | Change::HoldExpired { hold_id, .. } => token.holds.get(hold_id).cloned(),
                    _ => None,
                };
                apply_to_token(token, change, event.at, &event.actor);
                if let Some(movement) = Movement::of(change, token.version, event.at, &event.actor)
                {
                    // Rows are only ever added (a MongoDB commit inserts them): the original's
                    // row stays as it was, and this one says it was reversed, and by what.
                    if let Some(original) = movement.reverses {
                        self.index.push((
                            keys::reversal(token_id, original),
                            keys::seq_value(movement.version),
                        ));
                    }
                    self.index.push((
                        keys::movement(token_id, movement.version),
                        movement.to_row(),
                    ));
                }
                if let Change::HoldPlaced { hold, .. } = change {
                    self.hold_deadlines.insert((
                        hold.expires_at,
                        token_id.clone(),
                        hold.id.clone(),
                    ));
                }
                if let Some(record) = closing {
                    self.hold_deadlines.remove(&(
                        record.hold.expires_at,
                        token_id.clone(),
                        record.hold.id.clone(),
                    ));
                    let closed = hold::closed(record, change, event);
                    self.index.push((
                        keys::closed_hold(token_id, &closed.hold.id),
                        serde_json::to_vec(&closed).unwrap_or_default(),
                    ));
                }
                if let Change::DistributionPaid {
                    distribution,
                    allocations,
                    ..
                } = change
                {
                    self.paid
                        .entry(token_id.clone())
                        .or_default()
                        .push(PaidDistribution {
                            spec: distribution.clone(),
                            allocations: allocations.clone(),
                            paid_at: event.at,
                            paid_by: event.actor.clone(),
                        });
                }
                for (investor, _) in change.balance_deltas() {
                    let balance = token.holdings.get(investor).map_or(0, |h| h.balance.0);
                    let no = match self.holder_nos.get(&(token_id.clone(), investor.clone())) {
                        Some(no) => *no,
                        None => {
                            let numbered =
                                self.holders_numbered.entry(token_id.clone()).or_default();
                            *numbered += 1;
                            self.holder_nos
                                .insert((token_id.clone(), investor.clone()), *numbered);
                            *numbered
                        }
                    };
                    self.index.push((
                        keys::holding(token_id, no, event.at, token.version),
                        keys::balance_value(balance as i128),
                    ));
                }
            }
        }
    }
}

/// Applies a token-level change to one token.
fn apply_to_token(token: &mut Token, change: &Change, now: Timestamp, actor: &Id) {
    token.version += 1;
    match change {
        Change::RulesUpdated { rules, .. } => token.rules = rules.clone(),
        Change::Issued {
            to,
            amount,
            locked_until,
            class,
            ..
        } => {
            token.total_supply.0 += amount.0;
            token.change_class_supply(class.as_ref(), amount.0 as i128);
            token.credit(to, class.as_ref(), *amount);
            if let Some(until) = locked_until {
                token.holding_mut(to).locks.push((*until, *amount));
            }
        }
        Change::Transferred {
            from,
            to,
            amount,
            forced,
            approval_id,
            class,
            ..
        } => {
            if let Some(approval) = approval_id {
                token.approvals.remove(approval);
            }
            token.debit(from, class.as_ref(), *amount);
            let sender = token.holding_mut(from);
            if !forced {
                sender.record_sent(*amount, now);
            }
            sender.trim_locks(now);
            token.credit(to, class.as_ref(), *amount);
        }
        Change::Redeemed {
            from,
            amount,
            class,
            ..
        } => {
            token.total_supply.0 -= amount.0;
            token.change_class_supply(class.as_ref(), -(amount.0 as i128));
            token.debit(from, class.as_ref(), *amount);
            token.holding_mut(from).trim_locks(now);
        }
        Change::InvestorFrozen { investor_id, .. } => token.holding_mut(investor_id).frozen = true,
        Change::InvestorUnfrozen { investor_id, .. } => {
            token.holding_mut(investor_id).frozen = false
        }
        Change::AmountFrozen {
            investor_id,
            amount,
            ..
        } => token.holding_mut(investor_id).frozen_amount.0 += amount.0,
        Change::AmountUnfrozen {
            investor_id,
            amount,
            ..
        } => token.holding_mut(investor_id).frozen_amount.0 -= amount.0,
        Change::Paused { .. } => token.paused = true,
        Change::Unpaused { .. } => token.paused = false,
        Change::DistributionPaid { distribution, .. } => {
            token.distributions.insert(distribution.id.clone());
        }
        Change::HoldPlaced {
            token_id,
            hold,
            approval_id,
        } => {
            if let Some(approval) = approval_id {
                token.approvals.remove(approval);
            }
            let sender = token.holding_mut(&hold.from);
            sender.held.0 += hold.amount.0;
            sender.move_class(hold.class.as_ref(), 0, hold.amount.0 as i128);
            token.holds.insert(
                hold.id.clone(),
                HoldRecord {
                    token_id: token_id.clone(),
                    hold: hold.clone(),
                    status: HoldStatus::Pending,
                    posted: Amount::ZERO,
                    released: Amount::ZERO,
                    placed_at: now,
                    placed_by: actor.clone(),
                    closed_at: None,
                    closed_by: None,
                    reason: None,
                    payment_confirmation: None,
                },
            );
        }
        Change::HoldPosted {
            hold_id,
            from,
            to,
            amount,
            class,
            ..
        } => {
            if let Some(record) = token.holds.remove(hold_id) {
                let sender = token.holding_mut(from);
                sender.held.0 -= record.hold.amount.0;
                sender.move_class(class.as_ref(), 0, -(record.hold.amount.0 as i128));
            }
            token.debit(from, class.as_ref(), *amount);
            let sender = token.holding_mut(from);
            sender.record_sent(*amount, now);
            sender.trim_locks(now);
            token.credit(to, class.as_ref(), *amount);
        }
        Change::TransferApproved { approval, .. } => {
            token
                .approvals
                .insert(approval.id.clone(), approval.clone());
        }
        Change::TransferApprovalRevoked { approval_id, .. } => {
            token.approvals.remove(approval_id);
        }
        Change::Reversed {
            original,
            from,
            to,
            amount,
            class,
            ..
        } => {
            // An agent's correction: not the investor's own transfer, so no limit counts it.
            let class = class.as_ref();
            match from {
                Some(from) => {
                    token.debit(from, class, *amount);
                    token.holding_mut(from).trim_locks(now);
                }
                None => {
                    token.total_supply.0 += amount.0;
                    token.change_class_supply(class, amount.0 as i128);
                }
            }
            match to {
                Some(to) => token.credit(to, class, *amount),
                None => {
                    token.total_supply.0 -= amount.0;
                    token.change_class_supply(class, -(amount.0 as i128));
                }
            }
            token.reversed.insert(original.version, token.version);
        }
        Change::HoldVoided {
            hold_id,
            from,
            class,
            ..
        }
        | Change::HoldExpired {
            hold_id,
            from,
            class,
            ..
        } => {
            if let Some(record) = token.holds.remove(hold_id) {
                let sender = token.holding_mut(from);
                sender.held.0 -= record.hold.amount.0;
                sender.move_class(class.as_ref(), 0, -(record.hold.amount.0 as i128));
            }
        }
        Change::ClassDefined { class, .. } => {
            let supply = token.class_supply(Some(&class.id));
            token.classes.insert(
                class.id.clone(),
                ClassState {
                    class: class.clone(),
                    supply,
                },
            );
        }
        Change::Converted {
            investor_id,
            from_class,
            to_class,
            amount,
            ..
        } => {
            let (from_class, to_class) = (from_class.as_ref(), to_class.as_ref());
            let signed = amount.0 as i128;
            token.change_class_supply(from_class, -signed);
            token.change_class_supply(to_class, signed);
            let holding = token.holding_mut(investor_id);
            holding.move_class(from_class, -signed, 0);
            holding.move_class(to_class, signed, 0);
        }
        Change::AssetObserved { .. }
        | Change::AssetIssuerObserved { .. }
        | Change::TokenClaimed { .. }
        | Change::TokenCreated { .. }
        | Change::InvestorRegistered { .. }
        | Change::InvestorUpdated { .. } => {}
    }
}

fn asset_suspended(token: &Token) -> Error {
    Error::refused(
        "asset_suspended",
        format!(
            "the asset of {} is suspended: nothing moves until it is reactivated",
            token.spec.symbol
        ),
    )
}

fn stale(what: &str, id: &str, version: u64) -> Error {
    Error::new(
        ErrorKind::Stale,
        "version_mismatch",
        format!("{what} {id} is at version {version}; fetch it again before changing it"),
    )
}

#[cfg(test)]
mod tests;
