//! The token service's types: token classes, holdings, investors, commands and events.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Bound,
};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use time::Date;

use super::{
    Allocation, CashLeg, ClassPosition, ClassRules, ClassState, Hold, HoldRecord, Movement,
    PaymentConfirmed, Rules,
};
use crate::{Amount, Country, Currency, Error, Id, Result, Timestamp, bounded_text, optional_text};

/// The most operations one batch may hold.
pub const MAX_BATCH: usize = 8_000;

/// What a batch does when one of its operations is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchMode {
    /// The whole batch is refused, naming the first operation refused: nothing changes.
    #[default]
    AllOrNothing,
    /// Each operation stands alone: the refused ones change nothing, the others apply, in
    /// order, each decided on what the ones before it left.
    Independent,
}

/// The largest supply a token may have, in its smallest unit: every balance then fits an `i128`.
pub const MAX_SUPPLY: Amount = Amount(1_000_000_000_000_000_000_000_000_000_000_000_000);

/// What the tokens service knows of an asset, learnt from the assets service's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetState {
    Approved,
    Tokenized,
    /// Its token's movements are halted until the asset is reactivated.
    Suspended,
    /// Its token can only be redeemed.
    Retired,
    /// Any other status: not open to tokenization.
    Unavailable,
}

/// What a token class is, fixed at creation (its rules can change later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSpec {
    pub id: Id,
    pub asset_id: Id,
    pub symbol: String,
    pub name: String,
    pub decimals: u8,
    pub max_supply: Amount,
    /// Price of one whole token in minor units of `currency`.
    pub unit_price: Amount,
    pub currency: Currency,
    pub rules: Rules,
}

impl TokenSpec {
    pub fn validate(&self) -> Result<()> {
        let symbol_ok = (2..=12).contains(&self.symbol.len())
            && self
                .symbol
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && self.symbol.as_bytes()[0].is_ascii_uppercase();
        if !symbol_ok {
            return Err(Error::invalid(
                "symbol",
                "symbol must be 2-12 upper-case letters or digits, starting with a letter",
            ));
        }
        bounded_text("name", &self.name, 200)?;
        if self.decimals > 18 {
            return Err(Error::invalid(
                "decimals",
                "decimals must be between 0 and 18",
            ));
        }
        if self.max_supply.is_zero() || self.max_supply > MAX_SUPPLY {
            return Err(Error::invalid(
                "max_supply",
                "max_supply must be between 1 and 10^36",
            ));
        }
        self.rules.validate()
    }
}

/// One investor's position in one token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub balance: Amount,
    /// Fully frozen: the investor can neither send nor receive.
    pub frozen: bool,
    /// Part of the balance that cannot move.
    pub frozen_amount: Amount,
    /// Part of the balance reserved by pending holds: still the investor's, promised to
    /// their receivers.
    #[serde(default)]
    pub held: Amount,
    /// Issued amounts that cannot be transferred before the instant given.
    pub locks: Vec<(Timestamp, Amount)>,
    /// Amounts sent by the investor's own transfers in the current UTC day and month.
    pub sent_day: (Option<Date>, Amount),
    pub sent_month: (Option<(i32, u8)>, Amount),
    /// The balance and held amount of each named share class (see `token::class`): within
    /// the totals above, the default class having the rest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<Id, ClassPosition>,
}

impl Holding {
    /// The balance and held amount of one class (`None`: the default class, what the named
    /// ones leave of the totals).
    pub fn position(&self, class: Option<&Id>) -> ClassPosition {
        match class {
            Some(class) => self.classes.get(class).copied().unwrap_or_default(),
            None => {
                let (balance, held) = self
                    .classes
                    .values()
                    .fold((0u128, 0u128), |(b, h), p| (b + p.balance.0, h + p.held.0));
                ClassPosition {
                    balance: Amount(self.balance.0.saturating_sub(balance)),
                    held: Amount(self.held.0.saturating_sub(held)),
                }
            }
        }
    }

    /// Adds `delta` to a named class's balance and `held_delta` to its held amount (the
    /// default class follows from the totals); an emptied class is forgotten.
    pub(super) fn move_class(&mut self, class: Option<&Id>, delta: i128, held_delta: i128) {
        let Some(class) = class else { return };
        let position = self.classes.entry(class.clone()).or_default();
        position.balance.0 = position.balance.0.saturating_add_signed(delta);
        position.held.0 = position.held.0.saturating_add_signed(held_delta);
        if position.balance.is_zero() && position.held.is_zero() {
            self.classes.remove(class);
        }
    }

    /// The part of the balance still under lock-up at `now`, never more than the balance.
    pub fn locked(&self, now: Timestamp) -> Amount {
        let locked: u128 = self
            .locks
            .iter()
            .filter(|(until, _)| *until > now)
            .map(|(_, a)| a.0)
            .sum();
        Amount(locked.min(self.balance.0))
    }

    /// The balance neither frozen nor on hold: what an agent's forced transfer or a
    /// redemption may take.
    pub fn available(&self) -> Amount {
        self.balance
            .saturating_sub(self.frozen_amount)
            .saturating_sub(self.held)
    }

    /// What the investor's own transfer may move at `now`: neither frozen, on hold nor locked.
    pub fn transferable(&self, now: Timestamp) -> Amount {
        self.available().saturating_sub(self.locked(now))
    }

    pub fn sent_today(&self, now: Timestamp) -> Amount {
        if self.sent_day.0 == Some(now.date()) {
            self.sent_day.1
        } else {
            Amount::ZERO
        }
    }

    pub fn sent_this_month(&self, now: Timestamp) -> Amount {
        if self.sent_month.0 == Some(month_of(now)) {
            self.sent_month.1
        } else {
            Amount::ZERO
        }
    }

    /// Saturating: with no limit set the same tokens may go back and forth without bound, and
    /// replaying the log must never overflow.
    pub(super) fn record_sent(&mut self, amount: Amount, now: Timestamp) {
        self.sent_day = (
            Some(now.date()),
            Amount(self.sent_today(now).0.saturating_add(amount.0)),
        );
        self.sent_month = (
            Some(month_of(now)),
            Amount(self.sent_this_month(now).0.saturating_add(amount.0)),
        );
    }

    /// Drops expired locks, and locks beyond the balance after an outflow (newest first).
    pub(super) fn trim_locks(&mut self, now: Timestamp) {
        self.locks.retain(|(until, _)| *until > now);
        let mut excess = self
            .locks
            .iter()
            .map(|(_, a)| a.0)
            .sum::<u128>()
            .saturating_sub(self.balance.0);
        while excess > 0 {
            let Some(last) = self.locks.last_mut() else {
                break;
            };
            let cut = excess.min(last.1.0);
            last.1.0 -= cut;
            excess -= cut;
            if last.1.is_zero() {
                self.locks.pop();
            }
        }
    }
}

fn month_of(t: Timestamp) -> (i32, u8) {
    (t.year(), t.month() as u8)
}

/// A token's holdings by investor: found by hash when deciding, and kept in investor order too,
/// so that a page of the cap table is a range of them rather than a scan of every holder. Stored
/// (in snapshots) as the map alone; the order is rebuilt when it is read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    by_investor: FxHashMap<Id, Holding>,
    order: BTreeSet<Id>,
}

impl Holdings {
    pub fn get(&self, investor: &str) -> Option<&Holding> {
        self.by_investor.get(investor)
    }

    pub fn len(&self) -> usize {
        self.by_investor.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_investor.is_empty()
    }

    /// Every investor that ever held the token, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Id> {
        self.by_investor.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &Holding> {
        self.by_investor.values()
    }

    /// Every holding, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Id, &Holding)> {
        self.by_investor.iter()
    }

    /// The holdings in investor order, after `after` (from the first without it).
    pub fn ordered_after<'a>(
        &'a self,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Id, &'a Holding)> + 'a {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.order
            .range::<str, _>((from, Bound::Unbounded))
            .filter_map(|id| self.by_investor.get_key_value(id))
    }

    /// The investor's holding, made empty if it has none.
    pub(super) fn entry(&mut self, investor: &Id) -> &mut Holding {
        if !self.by_investor.contains_key(investor) {
            self.order.insert(investor.clone());
        }
        self.by_investor.entry(investor.clone()).or_default()
    }
}

impl<'a> IntoIterator for &'a Holdings {
    type Item = (&'a Id, &'a Holding);
    type IntoIter = std::collections::hash_map::Iter<'a, Id, Holding>;

    fn into_iter(self) -> Self::IntoIter {
        self.by_investor.iter()
    }
}

impl Serialize for Holdings {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.by_investor.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Holdings {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let by_investor = FxHashMap::<Id, Holding>::deserialize(deserializer)?;
        let order = by_investor.keys().cloned().collect();
        Ok(Holdings { by_investor, order })
    }
}

/// One transfer an agent approved in advance: exactly `amount` of `class` from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferApproval {
    pub id: Id,
    pub from: Id,
    pub to: Id,
    pub amount: Amount,
    /// The share class (absent: the default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Id>,
}

/// A token class and every holding in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub spec: TokenSpec,
    pub rules: Rules,
    pub paused: bool,
    pub total_supply: Amount,
    /// Holders with a positive balance.
    pub holders: u64,
    pub holdings: Holdings,
    pub distributions: BTreeSet<Id>,
    /// The pending holds, by id (closed ones are in the index, see [`super::keys::closed_hold`]).
    #[serde(default)]
    pub holds: BTreeMap<Id, HoldRecord>,
    /// The transfers an agent approved and not used yet, by id (see
    /// `Operation::ApproveTransfer`).
    #[serde(default)]
    pub approvals: BTreeMap<Id, TransferApproval>,
    /// The movements reversed, by version, with their reversal's version: one entry per
    /// reversal, which an agent makes one by one (the movements are in the index).
    #[serde(default)]
    pub reversed: BTreeMap<u64, u64>,
    /// The share classes an agent defined, by id, with their supply (see `token::class`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<Id, ClassState>,
    /// Incremented by every event of this token; the ETag, and the point reconciliation compares at.
    pub version: u64,
    pub created_at: Timestamp,
}

impl Token {
    pub(super) fn new(spec: TokenSpec, at: Timestamp) -> Self {
        Token {
            rules: spec.rules.clone(),
            spec,
            paused: false,
            total_supply: Amount::ZERO,
            holders: 0,
            holdings: Holdings::default(),
            distributions: BTreeSet::new(),
            holds: BTreeMap::new(),
            approvals: BTreeMap::new(),
            reversed: BTreeMap::new(),
            classes: BTreeMap::new(),
            version: 1,
            created_at: at,
        }
    }

    pub fn holding(&self, investor: &str) -> Option<&Holding> {
        self.holdings.get(investor)
    }

    pub fn balance(&self, investor: &str) -> Amount {
        self.holdings
            .get(investor)
            .map_or(Amount::ZERO, |h| h.balance)
    }

    pub(super) fn holding_mut(&mut self, investor: &Id) -> &mut Holding {
        self.holdings.entry(investor)
    }

    /// What `holding` may move by the investor's own transfers at `now`: what is neither
    /// frozen, on hold nor locked up, less the units of classes locked up now. Those cannot
    /// move, so they never stand in for a frozen amount or a lock-up elsewhere in the holding.
    pub fn transferable(&self, holding: &Holding, now: Timestamp) -> Amount {
        let in_locked_classes: u128 = holding
            .classes
            .iter()
            .filter(|(class, _)| self.class_locked(class, now))
            .map(|(_, p)| p.balance.0.saturating_sub(p.held.0))
            .sum();
        holding
            .transferable(now)
            .saturating_sub(Amount(in_locked_classes))
    }

    /// Whether `class` is locked up at `now` (its `locked_until` not reached).
    pub fn class_locked(&self, class: &Id, now: Timestamp) -> bool {
        self.classes
            .get(class)
            .and_then(|c| c.class.rules.locked_until)
            .is_some_and(|until| until > now)
    }

    /// The units of `class` that exist (`None`: the default class's).
    pub fn class_supply(&self, class: Option<&Id>) -> Amount {
        match class {
            Some(class) => self.classes.get(class).map_or(Amount::ZERO, |c| c.supply),
            None => Amount(
                self.total_supply
                    .0
                    .saturating_sub(self.classes.values().map(|c| c.supply.0).sum::<u128>()),
            ),
        }
    }

    /// Adds `delta` to the supply of a named class (the default class follows from the total).
    pub(super) fn change_class_supply(&mut self, class: Option<&Id>, delta: i128) {
        if let Some(state) = class.and_then(|c| self.classes.get_mut(c)) {
            state.supply.0 = state.supply.0.saturating_add_signed(delta);
        }
    }

    pub(super) fn credit(&mut self, investor: &Id, class: Option<&Id>, amount: Amount) {
        let holding = self.holding_mut(investor);
        let was_zero = holding.balance.is_zero();
        holding.balance.0 += amount.0;
        holding.move_class(class, amount.0 as i128, 0);
        if was_zero && !holding.balance.is_zero() {
            self.holders += 1;
        }
    }

    pub(super) fn debit(&mut self, investor: &Id, class: Option<&Id>, amount: Amount) {
        let holding = self.holding_mut(investor);
        let was_zero = holding.balance.is_zero();
        holding.balance.0 -= amount.0;
        holding.move_class(class, -(amount.0 as i128), 0);
        if !was_zero && holding.balance.is_zero() {
            self.holders -= 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KycStatus {
    Pending,
    Verified,
    Rejected,
    Expired,
}

/// What the platform knows of an investor's identity and eligibility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvestorProfile {
    /// Reference into the identity provider's records; no personal data is kept here.
    pub identity_ref: String,
    pub country: Country,
    pub kyc_status: KycStatus,
    pub kyc_expires_on: Option<Date>,
    pub accredited: bool,
    pub wallet: Option<String>,
}

impl InvestorProfile {
    pub fn validate(&self) -> Result<()> {
        bounded_text("identity_ref", &self.identity_ref, 200)?;
        if !self.country.is_assigned() {
            return Err(Error::invalid(
                "country",
                format!(
                    "{} is not a country: ISO 3166-1 assigns no country that code",
                    self.country
                ),
            ));
        }
        optional_text("wallet", self.wallet.as_deref(), 200)?;
        if self.kyc_status == KycStatus::Verified && self.kyc_expires_on.is_none() {
            return Err(Error::invalid(
                "kyc_expires_on",
                "a verified KYC needs an expiry date",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Investor {
    pub id: Id,
    pub profile: InvestorProfile,
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A payment of money to a token's holders pro rata to their balances at the record date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistributionSpec {
    pub id: Id,
    pub total: Amount,
    pub currency: Currency,
    #[serde(with = "time::serde::rfc3339")]
    pub record_date: Timestamp,
    pub memo: Option<String>,
}

impl DistributionSpec {
    pub fn validate(&self, now: Timestamp) -> Result<()> {
        if self.total.is_zero() || self.total > MAX_SUPPLY {
            return Err(Error::invalid("total", "total must be between 1 and 10^36"));
        }
        if self.record_date > now {
            return Err(Error::invalid(
                "record_date",
                "record_date must not be in the future",
            ));
        }
        optional_text("memo", self.memo.as_deref(), 500)?;
        Ok(())
    }
}

/// A movement or an agent's action on one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    Issue {
        to: Id,
        amount: Amount,
        /// The share class moved (absent, or `default`: the default class).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "super::class::deserialize_class"
        )]
        class: Option<Id>,
    },
    Transfer {
        from: Id,
        to: Id,
        amount: Amount,
        /// The share class moved (absent, or `default`: the default class).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "super::class::deserialize_class"
        )]
        class: Option<Id>,
    },
    Redeem {
        from: Id,
        amount: Amount,
        /// The share class moved (absent, or `default`: the default class).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "super::class::deserialize_class"
        )]
        class: Option<Id>,
    },
    /// An agent's transfer without the sender's consent, e.g. recovery of a lost account.
    ForcedTransfer {
        from: Id,
        to: Id,
        amount: Amount,
        reason: String,
        /// The share class moved (absent, or `default`: the default class).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "super::class::deserialize_class"
        )]
        class: Option<Id>,
    },
    Freeze {
        investor_id: Id,
    },
    Unfreeze {
        investor_id: Id,
    },
    FreezeAmount {
        investor_id: Id,
        amount: Amount,
    },
    UnfreezeAmount {
        investor_id: Id,
        amount: Amount,
    },
    Pause,
    Unpause,
    /// Reserves `amount` of `from`'s balance for `to` until `expires_at` (see `token::hold`).
    PlaceHold {
        /// Given by the service, never by the caller.
        #[serde(skip_deserializing, default)]
        hold_id: Id,
        from: Id,
        to: Id,
        amount: Amount,
        #[serde(with = "time::serde::rfc3339")]
        expires_at: Timestamp,
        /// A cash leg makes the hold a settlement against payment.
        #[serde(default)]
        payment: Option<CashLeg>,
        /// The share class moved (absent, or `default`: the default class).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "super::class::deserialize_class"
        )]
        class: Option<Id>,
    },
    /// Moves `amount` of a pending hold (all of it if absent) to its receiver.
    PostHold {
        hold_id: Id,
        #[serde(default)]
        amount: Option<Amount>,
    },
    VoidHold {
        hold_id: Id,
        reason: String,
    },
    /// A payment agent's confirmation of a settlement's cash leg: the tokens move with it.
    ConfirmPayment {
        hold_id: Id,
        confirmation: String,
    },
    /// A payment agent's rejection of a settlement's cash leg: the hold is voided.
    RejectPayment {
        hold_id: Id,
        reason: String,
    },
    /// An agent pre-approves one transfer of exactly `amount` from `from` to `to`: where the
    /// token's rules require approval, it then passes once (ERC-3643's conditional transfers).
    ApproveTransfer {
        /// Given by the service, never by the caller.
        #[serde(skip_deserializing, default)]
        approval_id: Id,
        from: Id,
        to: Id,
        amount: Amount,
        /// The share class approved (absent, or `default`: the default class).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "super::class::deserialize_class"
        )]
        class: Option<Id>,
    },
    /// Withdraws an approval not used yet.
    RevokeTransferApproval {
        approval_id: Id,
    },
    /// Reverses the movement the token's event `version` made (see `token::reversal`).
    Reverse {
        version: u64,
        reason: String,
        /// The movement's record, read from the index by the service, never given by the
        /// caller.
        #[serde(skip_deserializing, default)]
        original: Option<Movement>,
    },
    /// Defines a share class of the token, or changes its name and rules (see `token::class`).
    DefineClass {
        class: Id,
        name: String,
        /// Absent or null: no rules of its own.
        #[serde(default, deserialize_with = "super::class::deserialize_rules")]
        rules: ClassRules,
    },
    /// Moves `amount` of an investor's units from one class to another (absent: the default
    /// class): an agent's operation.
    Convert {
        investor_id: Id,
        #[serde(default, deserialize_with = "super::class::deserialize_class")]
        from_class: Option<Id>,
        #[serde(default, deserialize_with = "super::class::deserialize_class")]
        to_class: Option<Id>,
        amount: Amount,
        reason: String,
    },
}

impl Operation {
    /// Every operation's name, as an agent restriction lists it (see `Rules::agent_restrictions`),
    /// with the token-level commands a restriction can also name.
    pub const NAMES: &'static [&'static str] = &[
        "issue",
        "transfer",
        "redeem",
        "forced_transfer",
        "freeze",
        "unfreeze",
        "freeze_amount",
        "unfreeze_amount",
        "pause",
        "unpause",
        "place_hold",
        "post_hold",
        "void_hold",
        "confirm_payment",
        "reject_payment",
        "approve_transfer",
        "revoke_transfer_approval",
        "reverse",
        "define_class",
        "convert",
        "distribute",
        "update_rules",
    ];

    /// Its name, the `op` of a batch operation.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Issue { .. } => "issue",
            Operation::Transfer { .. } => "transfer",
            Operation::Redeem { .. } => "redeem",
            Operation::ForcedTransfer { .. } => "forced_transfer",
            Operation::Freeze { .. } => "freeze",
            Operation::Unfreeze { .. } => "unfreeze",
            Operation::FreezeAmount { .. } => "freeze_amount",
            Operation::UnfreezeAmount { .. } => "unfreeze_amount",
            Operation::Pause => "pause",
            Operation::Unpause => "unpause",
            Operation::PlaceHold { .. } => "place_hold",
            Operation::PostHold { .. } => "post_hold",
            Operation::VoidHold { .. } => "void_hold",
            Operation::ConfirmPayment { .. } => "confirm_payment",
            Operation::RejectPayment { .. } => "reject_payment",
            Operation::ApproveTransfer { .. } => "approve_transfer",
            Operation::RevokeTransferApproval { .. } => "revoke_transfer_approval",
            Operation::Reverse { .. } => "reverse",
            Operation::DefineClass { .. } => "define_class",
            Operation::Convert { .. } => "convert",
        }
    }

    /// Whether it moves tokens between holders (or mints them): what a suspended or retired
    /// asset stops.
    pub fn moves(&self) -> bool {
        matches!(
            self,
            Operation::Issue { .. }
                | Operation::Transfer { .. }
                | Operation::ForcedTransfer { .. }
                | Operation::PlaceHold { .. }
                | Operation::PostHold { .. }
                | Operation::ConfirmPayment { .. }
                | Operation::Reverse { .. }
                | Operation::Convert { .. }
        )
    }
}

/// Who issues an asset's tokens, as the assets service registered the asset: its legal owner
/// (usually the special-purpose vehicle) and the asset's country.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetIssuer {
    pub legal_owner: String,
    pub country: Country,
    /// The asset's name.
    pub name: String,
}

#[derive(Debug, Clone)]
pub enum Command {
    /// What the assets service registered of an asset (its profile), at `sequence` of the
    /// asset's stream: older news changes nothing, as for [`Command::ObserveAsset`].
    ObserveAssetIssuer {
        asset_id: Id,
        issuer: AssetIssuer,
        sequence: u64,
    },
    /// What the assets service says of an asset, at `sequence` of that asset's stream (its
    /// events' CloudEvents `sequence`; 0 when unknown): an older or repeated one changes nothing.
    ObserveAsset {
        asset_id: Id,
        state: AssetState,
        sequence: u64,
    },
    /// Creates the token class at once: where one writer decides every token (an
    /// unpartitioned service).
    CreateToken(TokenSpec),
    /// Decides a token class where the tokens are partitioned: the registry checks the asset
    /// and the symbol (unique across every partition) and records the claim; the owner of the
    /// token's partition then opens it ([`Command::OpenToken`]).
    ClaimToken(TokenSpec),
    /// Opens a claimed token class in its own partition, with the claim's time as its
    /// creation time.
    OpenToken {
        spec: TokenSpec,
        claimed_at: Timestamp,
    },
    UpdateRules {
        token_id: Id,
        expected_version: u64,
        rules: Rules,
    },
    RegisterInvestor {
        id: Id,
        profile: InvestorProfile,
    },
    UpdateInvestor {
        id: Id,
        expected_version: u64,
        profile: InvestorProfile,
    },
    Operate {
        token_id: Id,
        operation: Operation,
    },
    /// Operations of one token, in order, as `mode` says.
    Batch {
        token_id: Id,
        operations: Vec<Operation>,
        mode: BatchMode,
    },
    /// Expires those of a token's holds that are pending and past their deadline (given by
    /// the service's clock: see `Book::expired_holds`).
    ExpireHolds {
        token_id: Id,
        hold_ids: Vec<Id>,
    },
    Distribute {
        token_id: Id,
        distribution: DistributionSpec,
        /// The holders' balances at the record date, read from the history by whoever gives
        /// the command (the history is on disk, not in the book).
        record_balances: RecordBalances,
    },
}

/// Holders' positive balances of a token at a record date, as read from its history at
/// `taken_at`: everything that happened up to then is in them, so a record date after it
/// cannot be paid from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBalances {
    pub taken_at: Timestamp,
    /// Sorted by investor.
    pub balances: Vec<(Id, Amount)>,
}

/// Something that happened in the tokens service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    pub actor: Id,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    AssetObserved {
        asset_id: Id,
        state: AssetState,
        /// The position in the asset's stream it was observed at; absent in older events.
        #[serde(default, skip_serializing_if = "is_zero")]
        sequence: u64,
    },
    /// The asset's issuer as registered (see `Command::ObserveAssetIssuer`). Keyed by the asset.
    AssetIssuerObserved {
        asset_id: Id,
        issuer: AssetIssuer,
        #[serde(default, skip_serializing_if = "is_zero")]
        sequence: u64,
    },
    /// The registry's decision that this token class will exist: its asset and symbol are
    /// taken from now on. Keyed by the asset.
    TokenClaimed {
        spec: TokenSpec,
    },
    TokenCreated {
        spec: TokenSpec,
        /// When it was claimed, if it was (partitioned tokens); else the event's time.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "time::serde::rfc3339::option"
        )]
        created_at: Option<Timestamp>,
    },
    RulesUpdated {
        token_id: Id,
        rules: Rules,
    },
    InvestorRegistered {
        investor_id: Id,
        profile: InvestorProfile,
    },
    InvestorUpdated {
        investor_id: Id,
        profile: InvestorProfile,
    },
    Issued {
        token_id: Id,
        to: Id,
        amount: Amount,
        #[serde(with = "time::serde::rfc3339::option")]
        locked_until: Option<Timestamp>,
        /// The share class (absent: the default class).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<Id>,
    },
    Transferred {
        token_id: Id,
        from: Id,
        to: Id,
        amount: Amount,
        forced: bool,
        reason: Option<String>,
        /// The agent's approval this transfer used (where the rules require one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_id: Option<Id>,
        /// The share class (absent: the default class).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<Id>,
    },
    Redeemed {
        token_id: Id,
        from: Id,
        amount: Amount,
        /// The share class (absent: the default class).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<Id>,
    },
    InvestorFrozen {
        token_id: Id,
        investor_id: Id,
    },
    InvestorUnfrozen {
        token_id: Id,
        investor_id: Id,
    },
    AmountFrozen {
        token_id: Id,
        investor_id: Id,
        amount: Amount,
    },
    AmountUnfrozen {
        token_id: Id,
        investor_id: Id,
        amount: Amount,
    },
    Paused {
        token_id: Id,
    },
    Unpaused {
        token_id: Id,
    },
    DistributionPaid {
        token_id: Id,
        distribution: DistributionSpec,
        allocations: Vec<Allocation>,
    },
    HoldPlaced {
        token_id: Id,
        hold: Hold,
        /// The agent's approval the hold used (where the rules require one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_id: Option<Id>,
    },
    TransferApproved {
        token_id: Id,
        approval: TransferApproval,
    },
    TransferApprovalRevoked {
        token_id: Id,
        approval_id: Id,
    },
    /// `amount` moved from `from` to `to`; `released` went back to `from`.
    HoldPosted {
        token_id: Id,
        hold_id: Id,
        from: Id,
        to: Id,
        amount: Amount,
        released: Amount,
        /// The cash leg, confirmed: a settlement against payment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payment: Option<PaymentConfirmed>,
        /// The share class (absent: the default class).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<Id>,
    },
    HoldVoided {
        token_id: Id,
        hold_id: Id,
        from: Id,
        amount: Amount,
        reason: String,
        /// Voided because the payment agent rejected the cash leg.
        #[serde(default)]
        payment_rejected: bool,
        /// The share class (absent: the default class).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<Id>,
    },
    HoldExpired {
        token_id: Id,
        hold_id: Id,
        from: Id,
        amount: Amount,
        /// The share class (absent: the default class).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<Id>,
    },
    /// `original` moved back: `amount` from `from` to `to` (no `from`: issued again; no `to`:
    /// taken out of the supply).
    Reversed {
        token_id: Id,
        original: Movement,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Id>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<Id>,
        amount: Amount,
        reason: String,
        /// The share class (absent: the default class).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class: Option<Id>,
    },
    /// A share class defined, or its name and rules changed.
    ClassDefined {
        token_id: Id,
        class: super::ShareClass,
    },
    /// `amount` of `investor_id`'s units moved from one class to another (absent: the
    /// default class); the holding's total is unchanged.
    Converted {
        token_id: Id,
        investor_id: Id,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_class: Option<Id>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_class: Option<Id>,
        amount: Amount,
        reason: String,
    },
}

impl Change {
    /// The versioned name of this event, the suffix of its CloudEvents type.
    pub fn name(&self) -> &'static str {
        match self {
            Change::AssetObserved { .. } => "asset_observed",
            Change::AssetIssuerObserved { .. } => "asset_issuer_observed",
            Change::TokenClaimed { .. } => "claimed",
            Change::TokenCreated { .. } => "created",
            Change::RulesUpdated { .. } => "rules_updated",
            Change::InvestorRegistered { .. } => "investor_registered",
            Change::InvestorUpdated { .. } => "investor_updated",
            Change::Issued { .. } => "issued",
            Change::Transferred { .. } => "transferred",
            Change::Redeemed { .. } => "redeemed",
            Change::InvestorFrozen { .. } => "investor_frozen",
            Change::InvestorUnfrozen { .. } => "investor_unfrozen",
            Change::AmountFrozen { .. } => "amount_frozen",
            Change::AmountUnfrozen { .. } => "amount_unfrozen",
            Change::Paused { .. } => "paused",
            Change::Unpaused { .. } => "unpaused",
            Change::DistributionPaid { .. } => "distribution_paid",
            Change::HoldPlaced { .. } => "hold_placed",
            Change::TransferApproved { .. } => "transfer_approved",
            Change::TransferApprovalRevoked { .. } => "transfer_approval_revoked",
            Change::HoldPosted { .. } => "hold_posted",
            Change::HoldVoided { .. } => "hold_voided",
            Change::HoldExpired { .. } => "hold_expired",
            Change::Reversed { .. } => "reversed",
            Change::ClassDefined { .. } => "class_defined",
            Change::Converted { .. } => "converted",
        }
    }

    /// The token this change belongs to, if any.
    pub fn token_id(&self) -> Option<&Id> {
        match self {
            Change::TokenCreated { spec, .. } => Some(&spec.id),
            Change::RulesUpdated { token_id, .. }
            | Change::Issued { token_id, .. }
            | Change::Transferred { token_id, .. }
            | Change::Redeemed { token_id, .. }
            | Change::InvestorFrozen { token_id, .. }
            | Change::InvestorUnfrozen { token_id, .. }
            | Change::AmountFrozen { token_id, .. }
            | Change::AmountUnfrozen { token_id, .. }
            | Change::Paused { token_id }
            | Change::Unpaused { token_id }
            | Change::DistributionPaid { token_id, .. }
            | Change::HoldPlaced { token_id, .. }
            | Change::TransferApproved { token_id, .. }
            | Change::TransferApprovalRevoked { token_id, .. }
            | Change::HoldPosted { token_id, .. }
            | Change::HoldVoided { token_id, .. }
            | Change::HoldExpired { token_id, .. }
            | Change::Reversed { token_id, .. }
            | Change::ClassDefined { token_id, .. }
            | Change::Converted { token_id, .. } => Some(token_id),
            Change::AssetObserved { .. }
            | Change::AssetIssuerObserved { .. }
            | Change::TokenClaimed { .. }
            | Change::InvestorRegistered { .. }
            | Change::InvestorUpdated { .. } => None,
        }
    }

    /// The key that keeps this change's events in order: its token, investor or asset.
    pub fn key(&self) -> &Id {
        match self {
            Change::AssetObserved { asset_id, .. }
            | Change::AssetIssuerObserved { asset_id, .. } => asset_id,
            Change::TokenClaimed { spec } => &spec.asset_id,
            Change::InvestorRegistered { investor_id, .. }
            | Change::InvestorUpdated { investor_id, .. } => investor_id,
            other => other
                .token_id()
                .unwrap_or_else(|| unreachable!("every other change has a token")),
        }
    }

    /// How the change moves balances: `(investor, signed amount)`, at most two of them.
    pub fn balance_deltas(&self) -> impl Iterator<Item = (&Id, i128)> {
        // Amounts are bounded by MAX_SUPPLY, far below i128::MAX.
        let signed = |a: &Amount| a.0 as i128;
        let pair = match self {
            Change::Issued { to, amount, .. } => [Some((to, signed(amount))), None],
            Change::Transferred {
                from, to, amount, ..
            } => [Some((from, -signed(amount))), Some((to, signed(amount)))],
            Change::Redeemed { from, amount, .. } => [Some((from, -signed(amount))), None],
            Change::HoldPosted {
                from, to, amount, ..
            } => [Some((from, -signed(amount))), Some((to, signed(amount)))],
            Change::Reversed {
                from, to, amount, ..
            } => [
                from.as_ref().map(|f| (f, -signed(amount))),
                to.as_ref().map(|t| (t, signed(amount))),
            ],
            _ => [None, None],
        };
        pair.into_iter().flatten()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
