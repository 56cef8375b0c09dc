//! Compliance: the rules a token's movements must pass, checked in one fixed order.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{
    Change, ClassState, Context, Hold, Investor, KycStatus, Operation, Token, class, hold, reversal,
};
use crate::{Amount, Country, Error, Id, Result, bounded_text};

/// The rules of one token. Absent limits do not apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// If present, only investors from these countries may receive.
    #[serde(default)]
    pub allowed_countries: Option<BTreeSet<Country>>,
    /// Investors from these countries may not receive.
    #[serde(default)]
    pub denied_countries: BTreeSet<Country>,
    #[serde(default)]
    pub require_accreditation: bool,
    #[serde(default)]
    pub max_holders: Option<u64>,
    #[serde(default)]
    pub max_balance: Option<Amount>,
    /// Seconds after issuance during which issued tokens cannot be transferred.
    #[serde(default)]
    pub lockup_seconds: u64,
    /// Most an investor may send by their own transfers in one UTC calendar day.
    #[serde(default)]
    pub daily_transfer_limit: Option<Amount>,
    /// Most an investor may send by their own transfers in one UTC calendar month.
    #[serde(default)]
    pub monthly_transfer_limit: Option<Amount>,
    /// Most holders from each of these countries (ERC-3643's country caps).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_holders_by_country: BTreeMap<Country, u64>,
    /// Least a new holder from each of these countries may receive by one movement
    /// (ERC-3643's minimum transfer by country).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub min_transfer_by_country: BTreeMap<Country, Amount>,
    /// Every investor's transfer (and hold) must match a transfer an agent approved, which
    /// it then uses up (ERC-3643's conditional transfers).
    #[serde(default, skip_serializing_if = "is_false")]
    pub transfer_approval_required: bool,
    /// Agents (by the subject of their token) who may do only the operations listed on this
    /// token, checked like a role (ERC-3643's agent restrictions; see `Operation::NAMES`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_restrictions: BTreeMap<String, BTreeSet<String>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Country lists (a token's or a class's) hold at most 300 codes each.
pub(super) fn country_lists_bounded(
    allowed: Option<&BTreeSet<Country>>,
    denied: &BTreeSet<Country>,
) -> Result<()> {
    if allowed.is_some_and(|a| a.len() > 300) || denied.len() > 300 {
        return Err(Error::invalid(
            "rules",
            "a country list holds at most 300 codes",
        ));
    }
    Ok(())
}

/// Whether lists of allowed (none: any) and denied countries admit `country`.
fn admits(
    allowed: Option<&BTreeSet<Country>>,
    denied: &BTreeSet<Country>,
    country: Country,
) -> bool {
    allowed.is_none_or(|a| a.contains(&country)) && !denied.contains(&country)
}

impl Rules {
    pub fn validate(&self) -> Result<()> {
        country_lists_bounded(self.allowed_countries.as_ref(), &self.denied_countries)?;
        if self.max_holders == Some(0) {
            return Err(Error::invalid(
                "rules.max_holders",
                "max_holders must be at least 1",
            ));
        }
        if self.max_holders_by_country.len() > 300 || self.min_transfer_by_country.len() > 300 {
            return Err(Error::invalid(
                "rules",
                "a country list holds at most 300 codes",
            ));
        }
        if let Some((country, _)) = self.max_holders_by_country.iter().find(|(_, n)| **n == 0) {
            return Err(Error::invalid(
                format!("rules.max_holders_by_country.{country}"),
                "a country's maximum of holders must be at least 1",
            ));
        }
        if let Some((country, _)) = self
            .min_transfer_by_country
            .iter()
            .find(|(_, a)| a.is_zero() || **a > super::MAX_SUPPLY)
        {
            return Err(Error::invalid(
                format!("rules.min_transfer_by_country.{country}"),
                "a country's minimum transfer is between 1 and 10^36",
            ));
        }
        if self.agent_restrictions.len() > 100 {
            return Err(Error::invalid(
                "rules.agent_restrictions",
                "at most 100 agents can be restricted",
            ));
        }
        for (agent, operations) in &self.agent_restrictions {
            if agent.trim().is_empty() || agent.len() > 200 || agent.trim() != agent {
                return Err(Error::invalid(
                    "rules.agent_restrictions",
                    "an agent is the subject of their token: 1-200 characters, no surrounding spaces",
                ));
            }
            if let Some(unknown) = operations
                .iter()
                .find(|op| !Operation::NAMES.contains(&op.as_str()))
            {
                return Err(Error::invalid(
                    format!("rules.agent_restrictions.{agent}"),
                    format!(
                        "{unknown} is not an operation; use any of {}",
                        Operation::NAMES.join(", ")
                    ),
                ));
            }
        }
        if self.lockup_seconds > 100 * 366 * 86_400 {
            return Err(Error::invalid(
                "rules.lockup_seconds",
                "lockup_seconds must be under 100 years",
            ));
        }
        Ok(())
    }
}

/// The holding of an investor who never held the token.
static NO_HOLDING: super::Holding = super::Holding {
    balance: Amount::ZERO,
    frozen: false,
    frozen_amount: Amount::ZERO,
    held: Amount::ZERO,
    locks: Vec::new(),
    sent_day: (None, Amount::ZERO),
    sent_month: (None, Amount::ZERO),
    classes: BTreeMap::new(),
};

/// The order in which the checks run, so the same request always gets the same code.
pub const CHECK_ORDER: &[&str] = &[
    "token_paused",
    "sender_frozen",
    "receiver_frozen",
    "kyc_not_verified",
    "kyc_expired",
    "accreditation_required",
    "country_not_allowed",
    "insufficient_balance",
    "insufficient_unfrozen_balance",
    "insufficient_unheld_balance",
    "lockup_active",
    "transfer_limit_exceeded",
    "transfer_not_approved",
    "supply_cap_exceeded",
    "below_country_minimum",
    "max_balance_exceeded",
    "max_holders_reached",
    "country_holders_reached",
];

/// Whether `actor` may do `operation` on `token`: an agent the token's rules restrict may do
/// only what their list names. Checked before any rule, like a role.
pub(super) fn agent_allowed(token: &Token, operation: &str, actor: &Id) -> Result<()> {
    match token.rules.agent_restrictions.get(actor.as_str()) {
        Some(allowed) if !allowed.contains(operation) => Err(Error::new(
            crate::ErrorKind::Forbidden,
            "agent_restricted",
            format!(
                "{actor} may not {operation} on {}: the token's rules restrict them to {}",
                token.spec.symbol,
                allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

/// Decides one operation on `token`, checking every rule that applies, in [`CHECK_ORDER`].
pub(super) fn decide(
    token: &Token,
    investors: &FxHashMap<Id, Investor>,
    operation: &Operation,
    ctx: &Context,
) -> Result<Change> {
    let token_id = token.spec.id.clone();
    let investor = |id: &Id, field: &'static str| investor(investors, id, field);
    Ok(match operation {
        Operation::Issue { to, amount, class } => {
            positive(*amount)?;
            let class_state = class::existing(token, class.as_ref(), "class")?;
            let receiver = investor(to, "to")?;
            not_paused(token)?;
            not_frozen(token, to, "receiver_frozen", "to")?;
            eligible(token, class_state, receiver, ctx, "to")?;
            within_supply(token, class_state, *amount)?;
            room_to_receive(token, investors, receiver, class_state, *amount, None)?;
            let locked_until = (token.rules.lockup_seconds > 0)
                .then(|| ctx.now + time::Duration::seconds(token.rules.lockup_seconds as i64));
            Change::Issued {
                token_id,
                to: to.clone(),
                amount: *amount,
                locked_until,
                class: class.clone(),
            }
        }
        Operation::Transfer {
            from,
            to,
            amount,
            class,
        } => {
            let approval_id = check_transfer(
                token,
                investors,
                Moving {
                    from,
                    to,
                    amount: *amount,
                    class: class.as_ref(),
                    unheld: Amount::ZERO,
                    room: true,
                    needs_approval: true,
                },
                ctx,
            )?;
            Change::Transferred {
                token_id,
                from: from.clone(),
                to: to.clone(),
                amount: *amount,
                forced: false,
                reason: None,
                approval_id,
                class: class.clone(),
            }
        }
        Operation::ForcedTransfer {
            from,
            to,
            amount,
            reason,
            class,
        } => {
            // An agent's move: it needs no consent and ignores pause, the sender's full freeze,
            // lock-up and limits, but it never moves a frozen amount and the receiver must be
            // eligible like any other.
            positive(*amount)?;
            distinct(from, to)?;
            let reason = bounded_text("reason", reason, 1_000)?;
            let class_state = class::existing(token, class.as_ref(), "class")?;
            investor(from, "from")?;
            let receiver = investor(to, "to")?;
            not_frozen(token, to, "receiver_frozen", "to")?;
            eligible(token, class_state, receiver, ctx, "to")?;
            let holding = token.holding(from).unwrap_or(&NO_HOLDING);
            available(token, holding, class.as_ref(), *amount, false, ctx)?;
            room_to_receive(token, investors, receiver, class_state, *amount, Some(from))?;
            Change::Transferred {
                token_id,
                from: from.clone(),
                to: to.clone(),
                amount: *amount,
                forced: true,
                reason: Some(reason),
                approval_id: None,
                class: class.clone(),
            }
        }
        Operation::Redeem {
            from,
            amount,
            class,
        } => {
            // The issuer buying back: lock-up does not apply; pause and freezes do.
            positive(*amount)?;
            class::existing(token, class.as_ref(), "class")?;
            investor(from, "from")?;
            not_paused(token)?;
            not_frozen(token, from, "sender_frozen", "from")?;
            let holding = token.holding(from).unwrap_or(&NO_HOLDING);
            available(token, holding, class.as_ref(), *amount, false, ctx)?;
            Change::Redeemed {
                token_id,
                from: from.clone(),
                amount: *amount,
                class: class.clone(),
            }
        }
        Operation::Freeze { investor_id } => {
            investor(investor_id, "investor_id")?;
            if token.holding(investor_id).is_some_and(|h| h.frozen) {
                return Err(Error::conflict(
                    "already_frozen",
                    format!("investor {investor_id} is already frozen"),
                ));
            }
            Change::InvestorFrozen {
                token_id,
                investor_id: investor_id.clone(),
            }
        }
        Operation::Unfreeze { investor_id } => {
            investor(investor_id, "investor_id")?;
            if !token.holding(investor_id).is_some_and(|h| h.frozen) {
                return Err(Error::conflict(
                    "not_frozen",
                    format!("investor {investor_id} is not frozen"),
                ));
            }
            Change::InvestorUnfrozen {
                token_id,
                investor_id: investor_id.clone(),
            }
        }
        Operation::FreezeAmount {
            investor_id,
            amount,
        } => {
            positive(*amount)?;
            investor(investor_id, "investor_id")?;
            let holding = token.holding(investor_id).unwrap_or(&NO_HOLDING);
            let free = holding.balance.saturating_sub(holding.frozen_amount);
            if amount.0 > free.0 {
                return Err(Error::refused(
                    "insufficient_unfrozen_balance",
                    format!("investor {investor_id} has {free} unfrozen, less than {amount}"),
                )
                .at("amount"));
            }
            // What is on hold is promised to a receiver: freezing it would break the promise.
            let unheld = holding.available();
            if amount.0 > unheld.0 {
                return Err(Error::refused(
                    "insufficient_unheld_balance",
                    format!(
                        "investor {investor_id} has {unheld} neither frozen nor on hold, less than {amount}"
                    ),
                )
                .at("amount"));
            }
            Change::AmountFrozen {
                token_id,
                investor_id: investor_id.clone(),
                amount: *amount,
            }
        }
        Operation::UnfreezeAmount {
            investor_id,
            amount,
        } => {
            positive(*amount)?;
            investor(investor_id, "investor_id")?;
            let frozen = token
                .holding(investor_id)
                .map_or(Amount::ZERO, |h| h.frozen_amount);
            if amount.0 > frozen.0 {
                return Err(Error::conflict(
                    "insufficient_frozen_amount",
                    format!("investor {investor_id} has only {frozen} frozen"),
                )
                .at("amount"));
            }
            Change::AmountUnfrozen {
                token_id,
                investor_id: investor_id.clone(),
                amount: *amount,
            }
        }
        Operation::Pause => {
            if token.paused {
                return Err(Error::conflict(
                    "already_paused",
                    "the token is already paused",
                ));
            }
            Change::Paused { token_id }
        }
        Operation::Unpause => {
            if !token.paused {
                return Err(Error::conflict("not_paused", "the token is not paused"));
            }
            Change::Unpaused { token_id }
        }
        Operation::PlaceHold {
            hold_id,
            from,
            to,
            amount,
            expires_at,
            payment,
            class,
        } => hold::place(
            token,
            investors,
            &Hold {
                id: hold_id.clone(),
                from: from.clone(),
                to: to.clone(),
                amount: *amount,
                expires_at: *expires_at,
                payment: payment.clone(),
                class: class.clone(),
            },
            ctx,
        )?,
        Operation::PostHold { hold_id, amount } => {
            hold::post(token, investors, hold_id, *amount, None, ctx)?
        }
        Operation::VoidHold { hold_id, reason } => hold::void(token, hold_id, reason, false)?,
        Operation::ConfirmPayment {
            hold_id,
            confirmation,
        } => {
            let confirmation = bounded_text("confirmation", confirmation, 200)?;
            hold::post(token, investors, hold_id, None, Some(confirmation), ctx)?
        }
        Operation::RejectPayment { hold_id, reason } => hold::void(token, hold_id, reason, true)?,
        Operation::ApproveTransfer {
            approval_id,
            from,
            to,
            amount,
            class,
        } => {
            positive(*amount)?;
            distinct(from, to)?;
            class::existing(token, class.as_ref(), "class")?;
            investor(from, "from")?;
            investor(to, "to")?;
            if approval_id.is_empty() || approval_id.len() > 100 {
                return Err(Error::invalid(
                    "approval_id",
                    "an approval id is 1-100 characters",
                ));
            }
            if token.approvals.contains_key(approval_id) {
                return Err(Error::conflict(
                    "approval_exists",
                    format!("approval {approval_id} already exists"),
                ));
            }
            if token.approvals.len() >= MAX_APPROVALS {
                return Err(Error::conflict(
                    "too_many_approvals",
                    format!(
                        "{} already has {MAX_APPROVALS} approvals waiting: revoke some first",
                        token.spec.symbol
                    ),
                ));
            }
            Change::TransferApproved {
                token_id,
                approval: super::TransferApproval {
                    id: approval_id.clone(),
                    from: from.clone(),
                    to: to.clone(),
                    amount: *amount,
                    class: class.clone(),
                },
            }
        }
        Operation::RevokeTransferApproval { approval_id } => {
            if !token.approvals.contains_key(approval_id) {
                return Err(Error::not_found(
                    "approval_not_found",
                    format!(
                        "no approval {approval_id} is waiting in {}",
                        token.spec.symbol
                    ),
                )
                .at("approval_id"));
            }
            Change::TransferApprovalRevoked {
                token_id,
                approval_id: approval_id.clone(),
            }
        }
        Operation::Reverse {
            version,
            reason,
            original,
        } => reversal::reverse(token, investors, *version, original.as_ref(), reason, ctx)?,
        Operation::DefineClass {
            class: id,
            name,
            rules,
        } => class::define(token, id, name, rules)?,
        Operation::Convert {
            investor_id,
            from_class,
            to_class,
            amount,
            reason,
        } => class::convert(
            token,
            investors,
            class::Conversion {
                investor_id,
                from_class: from_class.as_ref(),
                to_class: to_class.as_ref(),
                amount: *amount,
                reason,
            },
        )?,
    })
}

/// A voluntary movement from one investor to another, as a transfer or a hold makes it.
pub(super) struct Moving<'a> {
    pub from: &'a Id,
    pub to: &'a Id,
    pub amount: Amount,
    /// The share class moved (`None`: the default class).
    pub class: Option<&'a Id>,
    /// Held from the sender's balance but free for this movement: the hold being posted.
    pub unheld: Amount,
    /// Whether the receiver's maximum balance and the holder count are checked: not when a
    /// hold is placed, only when its tokens arrive.
    pub room: bool,
    /// Whether it needs (and uses up) an agent's approval where the rules require one: a
    /// transfer or a hold being placed, not a hold being posted (its placing used one).
    pub needs_approval: bool,
}

/// The most approvals a token keeps waiting.
pub const MAX_APPROVALS: usize = 10_000;

/// Every check of an investor's own transfer, in [`CHECK_ORDER`]; the approval it uses, if
/// the rules require one.
pub(super) fn check_transfer(
    token: &Token,
    investors: &FxHashMap<Id, Investor>,
    moving: Moving<'_>,
    ctx: &Context,
) -> Result<Option<Id>> {
    let Moving {
        from,
        to,
        amount,
        class,
        unheld,
        room,
        needs_approval,
    } = moving;
    let investor = |id: &Id, field: &'static str| investor(investors, id, field);
    positive(amount)?;
    distinct(from, to)?;
    let class_state = class::existing(token, class, "class")?;
    let sender = investor(from, "from")?;
    let receiver = investor(to, "to")?;
    not_paused(token)?;
    not_frozen(token, from, "sender_frozen", "from")?;
    not_frozen(token, to, "receiver_frozen", "to")?;
    kyc(sender, ctx, "from")?;
    eligible(token, class_state, receiver, ctx, "to")?;
    let holding = token.holding(from).unwrap_or(&NO_HOLDING);
    let released;
    let holding = if unheld.is_zero() {
        holding
    } else {
        let mut copy = holding.clone();
        copy.held = copy.held.saturating_sub(unheld);
        copy.move_class(class, 0, -(unheld.0 as i128));
        released = copy;
        &released
    };
    available(token, holding, class, amount, true, ctx)?;
    within_limits(token, holding, amount, ctx)?;
    let approval = match needs_approval && token.rules.transfer_approval_required {
        false => None,
        true => Some(approval_for(token, from, to, amount, class)?),
    };
    if room {
        room_to_receive(token, investors, receiver, class_state, amount, Some(from))?;
    }
    Ok(approval)
}

/// The first approval waiting for exactly this transfer.
fn approval_for(
    token: &Token,
    from: &Id,
    to: &Id,
    amount: Amount,
    class: Option<&Id>,
) -> Result<Id> {
    token
        .approvals
        .values()
        .find(|a| {
            a.from == *from && a.to == *to && a.amount == amount && a.class.as_ref() == class
        })
        .map(|a| a.id.clone())
        .ok_or_else(|| {
            Error::refused(
                "transfer_not_approved",
                format!(
                    "transfers of {} need an agent's approval, and none is waiting for {amount} of class {} from {from} to {to}",
                    token.spec.symbol,
                    class_name(class)
                ),
            )
        })
}

/// Every check a reversal passes, in [`CHECK_ORDER`]: `from` gives the tokens back (absent
/// when an issuance is reversed: none are minted but burnt), `to` gets them back (absent when a
/// redemption is reversed: they are issued again). Like an agent's forced transfer it needs no
/// consent and ignores lock-up and transfer limits; unlike one it stops at a pause and at
/// either side's freeze.
pub(super) fn check_reversal(
    token: &Token,
    investors: &FxHashMap<Id, Investor>,
    from: Option<&Id>,
    to: Option<&Id>,
    class: Option<&Id>,
    amount: Amount,
    ctx: &Context,
) -> Result<()> {
    let class_state = class::existing(token, class, "class")?;
    if let Some(from) = from {
        investor(investors, from, "from")?;
    }
    let receiver = to.map(|to| investor(investors, to, "to")).transpose()?;
    not_paused(token)?;
    if let Some(from) = from {
        not_frozen(token, from, "sender_frozen", "from")?;
    }
    if let Some(to) = to {
        not_frozen(token, to, "receiver_frozen", "to")?;
    }
    if let Some(receiver) = receiver {
        eligible(token, class_state, receiver, ctx, "to")?;
    }
    match from {
        Some(from) => available(
            token,
            token.holding(from).unwrap_or(&NO_HOLDING),
            class,
            amount,
            false,
            ctx,
        )?,
        None => within_supply(token, class_state, amount)?,
    }
    if let Some(receiver) = receiver {
        room_to_receive(token, investors, receiver, class_state, amount, from)?;
    }
    Ok(())
}

/// Every check a conversion passes, in [`CHECK_ORDER`] (see `class::convert`): the units free
/// in the class they leave, the holder eligible for the class they join (its own rules: the
/// token's the holder already meets), within its supply and balance caps.
pub(super) fn check_conversion(
    token: &Token,
    holder: &Investor,
    from_class: Option<&Id>,
    joining: Option<&ClassState>,
    amount: Amount,
) -> Result<()> {
    not_paused(token)?;
    not_frozen(token, &holder.id, "sender_frozen", "investor_id")?;
    if let Some(joining) = joining {
        class_eligible(token, joining, holder, "investor_id")?;
    }
    let holding = token.holding(&holder.id).unwrap_or(&NO_HOLDING);
    let position = holding.position(from_class);
    class_has(position, from_class, amount)?;
    class_has_unheld(position, from_class, amount)?;
    if let Some(joining) = joining {
        class_supply_room(token, joining, amount)?;
        class_balance_room(holding, joining, &holder.id, amount)?;
    }
    Ok(())
}

/// Whether `class`'s balance in a holding (`position`) covers `amount`.
fn class_has(position: super::ClassPosition, class: Option<&Id>, amount: Amount) -> Result<()> {
    if amount > position.balance {
        return Err(Error::refused(
            "insufficient_balance",
            format!(
                "the balance of class {} is {}, less than {amount}",
                class_name(class),
                position.balance
            ),
        )
        .at("amount"));
    }
    Ok(())
}

/// Whether what of `class`'s balance is not on hold covers `amount`.
fn class_has_unheld(
    position: super::ClassPosition,
    class: Option<&Id>,
    amount: Amount,
) -> Result<()> {
    let free = position.balance.saturating_sub(position.held);
    if amount > free {
        return Err(Error::refused(
            "insufficient_unheld_balance",
            format!(
                "{} of class {} is on hold: only {free} of it is free to move",
                position.held,
                class_name(class)
            ),
        )
        .at("amount"));
    }
    Ok(())
}

fn class_name(class: Option<&Id>) -> &str {
    class.map_or(class::DEFAULT_CLASS, |c| c.as_str())
}

/// Whether `amount` more of `class` fits under its own supply cap.
fn class_supply_room(token: &Token, class: &ClassState, amount: Amount) -> Result<()> {
    if let Some(max) = class.class.rules.max_supply
        && class.supply.0.saturating_add(amount.0) > max.0
    {
        return Err(Error::refused(
            "supply_cap_exceeded",
            format!(
                "{amount} more of class {} of {} would take it over its cap of {max} ({} exists)",
                class.class.id, token.spec.symbol, class.supply
            ),
        )
        .at("amount"));
    }
    Ok(())
}

/// Whether `to` can hold `amount` more of `class` under its own maximum balance.
fn class_balance_room(
    holding: &super::Holding,
    class: &ClassState,
    to: &Id,
    amount: Amount,
) -> Result<()> {
    let balance = holding.position(Some(&class.class.id)).balance;
    if let Some(max) = class.class.rules.max_balance
        && balance.0.saturating_add(amount.0) > max.0
    {
        return Err(Error::refused(
            "max_balance_exceeded",
            format!(
                "investor {to} would hold {} of class {}, over its maximum of {max}",
                balance.0.saturating_add(amount.0),
                class.class.id
            ),
        )
        .at("amount"));
    }
    Ok(())
}

/// Whether `amount` more fits under the token's supply cap, and the class's.
fn within_supply(token: &Token, class: Option<&ClassState>, amount: Amount) -> Result<()> {
    // Checked: `amount` comes from the request and may be as large as 2^128-1.
    let supply = token.total_supply.checked_add(amount);
    if supply.is_none_or(|s| s > token.spec.max_supply) {
        return Err(Error::refused(
            "supply_cap_exceeded",
            format!(
                "issuing {amount} would take the supply of {} over the cap of {}",
                token.total_supply, token.spec.max_supply
            ),
        )
        .at("amount"));
    }
    if let Some(class) = class {
        class_supply_room(token, class, amount)?;
    }
    Ok(())
}

fn investor<'a>(
    investors: &'a FxHashMap<Id, Investor>,
    id: &Id,
    field: &'static str,
) -> Result<&'a Investor> {
    investors.get(id).ok_or_else(|| {
        Error::not_found(
            "investor_not_found",
            format!("investor {id} does not exist"),
        )
        .at(field)
    })
}

fn positive(amount: Amount) -> Result<()> {
    if amount.is_zero() {
        Err(Error::invalid("amount", "amount must be greater than zero"))
    } else {
        Ok(())
    }
}

fn distinct(from: &Id, to: &Id) -> Result<()> {
    if from == to {
        Err(Error::invalid("to", "sender and receiver must differ"))
    } else {
        Ok(())
    }
}

fn not_paused(token: &Token) -> Result<()> {
    if token.paused {
        Err(Error::refused(
            "token_paused",
            format!("token {} is paused", token.spec.symbol),
        ))
    } else {
        Ok(())
    }
}

fn not_frozen(token: &Token, investor: &Id, code: &'static str, field: &'static str) -> Result<()> {
    if token.holding(investor).is_some_and(|h| h.frozen) {
        Err(Error::refused(
            code,
            format!("investor {investor} is frozen in {}", token.spec.symbol),
        )
        .at(field))
    } else {
        Ok(())
    }
}

fn kyc(investor: &Investor, ctx: &Context, field: &'static str) -> Result<()> {
    let p = &investor.profile;
    let expired = p.kyc_status == KycStatus::Expired
        || (p.kyc_status == KycStatus::Verified
            && p.kyc_expires_on.is_some_and(|d| d < ctx.now.date()));
    if expired {
        return Err(Error::refused(
            "kyc_expired",
            format!("the KYC of investor {} has expired", investor.id),
        )
        .at(field));
    }
    if p.kyc_status != KycStatus::Verified {
        return Err(Error::refused(
            "kyc_not_verified",
            format!("investor {} is not KYC verified", investor.id),
        )
        .at(field));
    }
    Ok(())
}

/// Whether `receiver` may hold this token at all, and `class` of it: KYC, accreditation,
/// country.
fn eligible(
    token: &Token,
    class: Option<&ClassState>,
    receiver: &Investor,
    ctx: &Context,
    field: &'static str,
) -> Result<()> {
    kyc(receiver, ctx, field)?;
    let rules = &token.rules;
    if rules.require_accreditation && !receiver.profile.accredited {
        return Err(Error::refused(
            "accreditation_required",
            format!("{} is open to accredited investors only", token.spec.symbol),
        )
        .at(field));
    }
    if let Some(class) = class {
        class_accreditation(token, class, receiver, field)?;
    }
    let country = receiver.profile.country;
    if !admits(
        rules.allowed_countries.as_ref(),
        &rules.denied_countries,
        country,
    ) {
        return Err(Error::refused(
            "country_not_allowed",
            format!(
                "investors from {country} may not hold {}",
                token.spec.symbol
            ),
        )
        .at(field));
    }
    if let Some(class) = class {
        class_countries(token, class, receiver, field)?;
    }
    Ok(())
}

/// A class's own eligibility rules (the token's are checked apart).
fn class_eligible(
    token: &Token,
    class: &ClassState,
    receiver: &Investor,
    field: &'static str,
) -> Result<()> {
    class_accreditation(token, class, receiver, field)?;
    class_countries(token, class, receiver, field)
}

fn class_accreditation(
    token: &Token,
    class: &ClassState,
    receiver: &Investor,
    field: &'static str,
) -> Result<()> {
    if class.class.rules.require_accreditation && !receiver.profile.accredited {
        return Err(Error::refused(
            "accreditation_required",
            format!(
                "class {} of {} is open to accredited investors only",
                class.class.id, token.spec.symbol
            ),
        )
        .at(field));
    }
    Ok(())
}

fn class_countries(
    token: &Token,
    class: &ClassState,
    receiver: &Investor,
    field: &'static str,
) -> Result<()> {
    let rules = &class.class.rules;
    let country = receiver.profile.country;
    if !admits(
        rules.allowed_countries.as_ref(),
        &rules.denied_countries,
        country,
    ) {
        return Err(Error::refused(
            "country_not_allowed",
            format!(
                "investors from {country} may not hold class {} of {}",
                class.class.id, token.spec.symbol
            ),
        )
        .at(field));
    }
    Ok(())
}

/// Whether `amount` of `class` can leave `holding`: a voluntary transfer also respects
/// lock-up. Each check counts on the holding as a whole, then on the class.
fn available(
    token: &Token,
    holding: &super::Holding,
    class: Option<&Id>,
    amount: Amount,
    voluntary: bool,
    ctx: &Context,
) -> Result<()> {
    if amount.0 > holding.balance.0 {
        return Err(Error::refused(
            "insufficient_balance",
            format!("the balance {} is less than {amount}", holding.balance),
        )
        .at("amount"));
    }
    // Only where classes are in play: else the class is the holding.
    let position =
        (class.is_some() || !holding.classes.is_empty()).then(|| holding.position(class));
    if let Some(position) = position {
        class_has(position, class, amount)?;
    }
    let unfrozen = holding.balance.saturating_sub(holding.frozen_amount);
    if amount.0 > unfrozen.0 {
        return Err(Error::refused(
            "insufficient_unfrozen_balance",
            format!("only {unfrozen} of the balance is not frozen"),
        )
        .at("amount"));
    }
    let unheld = holding.available();
    if amount.0 > unheld.0 {
        return Err(Error::refused(
            "insufficient_unheld_balance",
            format!(
                "{} of the balance is on hold: only {unheld} is free to move",
                holding.held
            ),
        )
        .at("amount"));
    }
    if let Some(position) = position {
        class_has_unheld(position, class, amount)?;
    }
    // The class moved first, then what the holding can move by the investor's own hand.
    if voluntary
        && let Some(state) = class.and_then(|c| token.classes.get(c))
        && let Some(until) = state.class.rules.locked_until
        && until > ctx.now
    {
        return Err(Error::refused(
            "lockup_active",
            format!(
                "class {} of {} is locked up until {until}",
                state.class.id, token.spec.symbol
            ),
        )
        .at("class"));
    }
    if voluntary && amount > token.transferable(holding, ctx.now) {
        return Err(Error::refused(
            "lockup_active",
            format!(
                "only {} is free of lock-up now",
                token.transferable(holding, ctx.now)
            ),
        )
        .at("amount"));
    }
    Ok(())
}

fn within_limits(
    token: &Token,
    holding: &super::Holding,
    amount: Amount,
    ctx: &Context,
) -> Result<()> {
    let windows = [
        (
            token.rules.daily_transfer_limit,
            holding.sent_today(ctx.now),
            "day",
        ),
        (
            token.rules.monthly_transfer_limit,
            holding.sent_this_month(ctx.now),
            "month",
        ),
    ];
    for (limit, sent, window) in windows {
        if let Some(limit) = limit
            && sent.0.saturating_add(amount.0) > limit.0
        {
            return Err(Error::refused(
                "transfer_limit_exceeded",
                format!("{sent} already sent this {window}; the limit is {limit}"),
            )
            .at("amount"));
        }
    }
    Ok(())
}

/// Whether `receiver` can take `amount` more without breaking the minimum for a new holder of
/// their country, the balance and the holder limits. `from` is the sender whose balance may
/// drop to zero, freeing a holder's place.
fn room_to_receive(
    token: &Token,
    investors: &FxHashMap<Id, Investor>,
    receiver: &Investor,
    class: Option<&ClassState>,
    amount: Amount,
    from: Option<&Id>,
) -> Result<()> {
    let to = &receiver.id;
    let country = receiver.profile.country;
    let balance = token.balance(to);
    let joins = balance.is_zero();
    if joins
        && let Some(min) = token.rules.min_transfer_by_country.get(&country)
        && amount < *min
    {
        return Err(Error::refused(
            "below_country_minimum",
            format!(
                "a new holder of {} from {country} receives at least {min}, not {amount}",
                token.spec.symbol
            ),
        )
        .at("amount"));
    }
    if let Some(max) = token.rules.max_balance
        && balance.0 + amount.0 > max.0
    {
        return Err(Error::refused(
            "max_balance_exceeded",
            format!(
                "investor {to} would hold {}, over the maximum of {max}",
                balance.0 + amount.0
            ),
        )
        .at("amount"));
    }
    if let Some(class) = class {
        let holding = token.holding(to).unwrap_or(&NO_HOLDING);
        class_balance_room(holding, class, to, amount)?;
    }
    if let Some(max) = token.rules.max_holders {
        let joins = u64::from(balance.is_zero());
        let leaves = u64::from(from.is_some_and(|f| token.balance(f) == amount));
        if token.holders + joins - leaves > max {
            return Err(Error::refused(
                "max_holders_reached",
                format!(
                    "{} already has its maximum of {max} holders",
                    token.spec.symbol
                ),
            )
            .at("to"));
        }
    }
    if joins && let Some(max) = token.rules.max_holders_by_country.get(&country) {
        // Counted over the holders (only when a new holder from a capped country would
        // join): the count follows investors' countries as they are now.
        let of_country = |id: &Id| {
            investors
                .get(id)
                .is_some_and(|i| i.profile.country == country)
        };
        let holders = token
            .holdings
            .iter()
            .filter(|(id, h)| !h.balance.is_zero() && of_country(id))
            .count() as u64;
        let leaves = u64::from(from.is_some_and(|f| token.balance(f) == amount && of_country(f)));
        if holders + 1 - leaves > *max {
            return Err(Error::refused(
                "country_holders_reached",
                format!(
                    "{} already has its maximum of {max} holders from {country}",
                    token.spec.symbol
                ),
            )
            .at("to"));
        }
    }
    Ok(())
}
