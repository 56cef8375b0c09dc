//! Holds: two-phase transfers (TigerBeetle's pending transfers), and delivery versus payment.
//!
//! A hold reserves part of a sender's balance for a receiver. It is pending until it is
//! **posted** (in full or in part: the rest goes back to the sender), **voided**, or
//! **expired** at its deadline. While it is pending the amount is still the sender's
//! (`balance`) but not theirs to move (`held`, outside `available`); the receiver's limits
//! (maximum balance, holder count) are not touched until it is posted. Compliance is checked
//! when the hold is placed and again when it is posted.
//!
//! A hold with a **cash leg** is a settlement instruction (delivery versus payment): it cannot
//! be posted by hand. A payment agent confirms the cash leg, and the tokens move in the same
//! event; a rejection voids it, and so does its expiry.

use serde::{Deserialize, Serialize};

use super::{Change, Context, Investor, Token, compliance};
use crate::{Amount, Currency, Error, Id, Result, Timestamp, bounded_text};
use rustc_hash::FxHashMap;

/// The longest a hold may stay pending.
pub const MAX_HOLD_SECONDS: i64 = 366 * 86_400;
/// The most holds of one token that one expiry command closes.
pub const EXPIRE_AT_ONCE: usize = 1_000;

/// What a hold reserves, fixed when it is placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: Id,
    pub from: Id,
    pub to: Id,
    pub amount: Amount,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: Timestamp,
    /// The cash leg of a settlement instruction (delivery versus payment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<CashLeg>,
    /// The share class held (absent: the default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Id>,
}

/// The cash side of a settlement: paid outside the platform, in minor units of `currency`,
/// under the payer's `reference`, and confirmed by a payment agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CashLeg {
    pub currency: Currency,
    pub amount: Amount,
    pub reference: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    Pending,
    Posted,
    Voided,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Pending => "pending",
            HoldStatus::Posted => "posted",
            HoldStatus::Voided => "voided",
            HoldStatus::Expired => "expired",
        }
    }
}

/// A hold and what became of it. Pending ones live in their token; a closed one is written to
/// the index (see [`super::keys::closed_hold`]) and leaves memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub token_id: Id,
    #[serde(flatten)]
    pub hold: Hold,
    pub status: HoldStatus,
    /// What moved to the receiver when it was posted.
    pub posted: Amount,
    /// What went back to the sender when it closed.
    pub released: Amount,
    #[serde(with = "time::serde::rfc3339")]
    pub placed_at: Timestamp,
    pub placed_by: Id,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub closed_at: Option<Timestamp>,
    #[serde(default)]
    pub closed_by: Option<Id>,
    /// Why it was voided.
    #[serde(default)]
    pub reason: Option<String>,
    /// The payment agent's confirmation of the cash leg.
    #[serde(default)]
    pub payment_confirmation: Option<String>,
}

/// What a pending hold's sender cannot otherwise move, checked like a transfer at placement.
pub(super) fn place(
    token: &Token,
    investors: &FxHashMap<Id, Investor>,
    hold: &Hold,
    ctx: &Context,
) -> Result<Change> {
    if hold.id.is_empty() || hold.id.len() > 100 || hold.id.contains('|') {
        return Err(Error::invalid(
            "hold_id",
            "a hold id is 1-100 characters without '|'",
        ));
    }
    if token.holds.contains_key(&hold.id) {
        return Err(Error::conflict(
            "hold_exists",
            format!("hold {} already exists", hold.id),
        ));
    }
    if hold.expires_at <= ctx.now {
        return Err(Error::invalid(
            "expires_at",
            "expires_at must be in the future",
        ));
    }
    if hold.expires_at > ctx.now + time::Duration::seconds(MAX_HOLD_SECONDS) {
        return Err(Error::invalid(
            "expires_at",
            "a hold expires within 366 days of being placed",
        ));
    }
    let payment = match &hold.payment {
        Some(leg) => {
            if leg.amount.is_zero() || leg.amount > super::MAX_SUPPLY {
                return Err(Error::invalid(
                    "payment.amount",
                    "payment.amount must be between 1 and 10^36",
                ));
            }
            let reference = bounded_text("payment.reference", &leg.reference, 200)?;
            Some(CashLeg {
                reference,
                ..leg.clone()
            })
        }
        None => None,
    };
    // Every check of a voluntary transfer but the receiver's room: that is counted when the
    // tokens arrive, at posting. Where transfers need an agent's approval, placing the hold
    // uses it up.
    super::class::existing(token, hold.class.as_ref(), "class")?;
    let approval_id = compliance::check_transfer(
        token,
        investors,
        compliance::Moving {
            from: &hold.from,
            to: &hold.to,
            amount: hold.amount,
            class: hold.class.as_ref(),
            unheld: Amount::ZERO,
            room: false,
            needs_approval: true,
        },
        ctx,
    )?;
    Ok(Change::HoldPlaced {
        token_id: token.spec.id.clone(),
        hold: Hold {
            payment,
            ..hold.clone()
        },
        approval_id,
    })
}

fn pending<'a>(token: &'a Token, hold_id: &Id) -> Result<&'a HoldRecord> {
    token.holds.get(hold_id).ok_or_else(|| {
        Error::conflict(
            "hold_not_pending",
            format!("hold {hold_id} is not pending in {}", token.spec.symbol),
        )
        .at("hold_id")
    })
}

/// Posts `amount` of a pending hold (all of it if absent), checking the transfer again as it
/// is now; what is not posted goes back to the sender.
pub(super) fn post(
    token: &Token,
    investors: &FxHashMap<Id, Investor>,
    hold_id: &Id,
    amount: Option<Amount>,
    payment_confirmation: Option<String>,
    ctx: &Context,
) -> Result<Change> {
    let record = pending(token, hold_id)?;
    let hold = &record.hold;
    match (&hold.payment, &payment_confirmation) {
        (Some(_), None) => {
            return Err(Error::conflict(
                "payment_not_confirmed",
                format!(
                    "hold {hold_id} settles against a payment: it is posted when a payment agent confirms the payment"
                ),
            ));
        }
        (None, Some(_)) => {
            return Err(Error::conflict(
                "no_payment_leg",
                format!("hold {hold_id} has no cash leg to confirm"),
            ));
        }
        _ => {}
    }
    let posted = amount.unwrap_or(hold.amount);
    if posted.is_zero() || posted > hold.amount {
        return Err(Error::invalid(
            "amount",
            format!("a posting takes 1 to the {} held", hold.amount),
        ));
    }
    if hold.payment.is_some() && posted != hold.amount {
        return Err(Error::invalid(
            "amount",
            "a settlement against a payment is posted in full",
        ));
    }
    if ctx.now >= hold.expires_at {
        return Err(Error::conflict(
            "hold_expired",
            format!("hold {hold_id} expired at its deadline"),
        ));
    }
    // Checked as the transfer it becomes now, with the hold's own amount free again.
    compliance::check_transfer(
        token,
        investors,
        compliance::Moving {
            from: &hold.from,
            to: &hold.to,
            amount: posted,
            class: hold.class.as_ref(),
            unheld: hold.amount,
            room: true,
            needs_approval: false,
        },
        ctx,
    )?;
    Ok(Change::HoldPosted {
        token_id: token.spec.id.clone(),
        hold_id: hold_id.clone(),
        from: hold.from.clone(),
        to: hold.to.clone(),
        amount: posted,
        released: Amount(hold.amount.0 - posted.0),
        payment: payment_confirmation.map(|confirmation| PaymentConfirmed {
            leg: hold.payment.clone().expect("checked above"),
            confirmation,
        }),
        class: hold.class.clone(),
    })
}

/// The cash leg as confirmed: what the ledger records as paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentConfirmed {
    #[serde(flatten)]
    pub leg: CashLeg,
    pub confirmation: String,
}

/// Voids a pending hold: everything goes back to the sender.
pub(super) fn void(
    token: &Token,
    hold_id: &Id,
    reason: &str,
    payment_rejected: bool,
) -> Result<Change> {
    let record = pending(token, hold_id)?;
    if payment_rejected && record.hold.payment.is_none() {
        return Err(Error::conflict(
            "no_payment_leg",
            format!("hold {hold_id} has no cash leg to reject"),
        ));
    }
    let reason = bounded_text("reason", reason, 1_000)?;
    Ok(Change::HoldVoided {
        token_id: token.spec.id.clone(),
        hold_id: hold_id.clone(),
        from: record.hold.from.clone(),
        amount: record.hold.amount,
        reason,
        payment_rejected,
        class: record.hold.class.clone(),
    })
}

/// Expires what of `hold_ids` is still pending and past its deadline at `now`.
pub(super) fn expire(token: &Token, hold_ids: &[Id], now: Timestamp) -> Vec<Change> {
    hold_ids
        .iter()
        .filter_map(|id| token.holds.get(id))
        .filter(|record| record.hold.expires_at <= now)
        .map(|record| Change::HoldExpired {
            token_id: token.spec.id.clone(),
            hold_id: record.hold.id.clone(),
            from: record.hold.from.clone(),
            amount: record.hold.amount,
            class: record.hold.class.clone(),
        })
        .collect()
}

/// A pending hold's record as `change` closes it.
pub(super) fn closed(mut record: HoldRecord, change: &Change, event: &super::Event) -> HoldRecord {
    record.closed_at = Some(event.at);
    record.closed_by = Some(event.actor.clone());
    match change {
        Change::HoldPosted {
            amount,
            released,
            payment,
            ..
        } => {
            record.status = HoldStatus::Posted;
            record.posted = *amount;
            record.released = *released;
            record.payment_confirmation = payment.as_ref().map(|p| p.confirmation.clone());
        }
        Change::HoldVoided { reason, .. } => {
            record.status = HoldStatus::Voided;
            record.released = record.hold.amount;
            record.reason = Some(reason.clone());
        }
        _ => {
            record.status = HoldStatus::Expired;
            record.released = record.hold.amount;
        }
    }
    record
}
