//! Movements and their reversal (Formance's reverts).
//!
//! Every event that moves tokens (an issuance, a transfer, forced or not, a redemption, a
//! posted hold, a reversal) is a **movement**, named by the token's version its event made
//! (the event's `subjectversion`). Its record is written to the index of its token's partition
//! with the event (see [`super::keys::movement`]); history stays on disk, not in memory.
//!
//! A movement can be **reversed** once, by an agent, with a reason: a new movement of the same
//! amount the other way between the same accounts (an issuance is taken back, a redemption
//! issued again), which names the original and is checked against the rules as they are now:
//! it is refused, changing nothing, if it would break one.

use serde::{Deserialize, Serialize};

use super::{Change, Context, Investor, Token, compliance};
use crate::{Amount, Error, Id, Result, Timestamp, bounded_text};
use rustc_hash::FxHashMap;

/// What kind of movement a record is: the name of the event that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    Issued,
    Transferred,
    Redeemed,
    HoldPosted,
    Reversed,
}

/// A movement as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    /// The token's version its event made (the event's `subjectversion`): its name.
    pub version: u64,
    pub kind: MovementKind,
    /// Who gave the tokens; absent for an issuance (minted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Id>,
    /// Who got them; absent for a redemption (burnt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Id>,
    pub amount: Amount,
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    pub actor: Id,
    /// An agent's forced transfer.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forced: bool,
    /// A forced transfer's or a reversal's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The hold a posting settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<Id>,
    /// A reversal: the version of the movement it reverses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverses: Option<u64>,
    /// Reversed: the version of the reversal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reversed_by: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Movement {
    /// The movement `change` made, at the token's `version` after it; `None` if it moved
    /// nothing.
    pub fn of(change: &Change, version: u64, at: Timestamp, actor: &Id) -> Option<Movement> {
        let record = |kind, from: Option<&Id>, to: Option<&Id>, amount: &Amount| Movement {
            version,
            kind,
            from: from.cloned(),
            to: to.cloned(),
            amount: *amount,
            at,
            actor: actor.clone(),
            forced: false,
            reason: None,
            hold_id: None,
            reverses: None,
            reversed_by: None,
        };
        Some(match change {
            Change::Issued { to, amount, .. } => {
                record(MovementKind::Issued, None, Some(to), amount)
            }
            Change::Transferred {
                from,
                to,
                amount,
                forced,
                reason,
                ..
            } => Movement {
                forced: *forced,
                reason: reason.clone(),
                ..record(MovementKind::Transferred, Some(from), Some(to), amount)
            },
            Change::Redeemed { from, amount, .. } => {
                record(MovementKind::Redeemed, Some(from), None, amount)
            }
            Change::HoldPosted {
                hold_id,
                from,
                to,
                amount,
                ..
            } if !amount.is_zero() => Movement {
                hold_id: Some(hold_id.clone()),
                ..record(MovementKind::HoldPosted, Some(from), Some(to), amount)
            },
            Change::Reversed {
                original,
                from,
                to,
                amount,
                reason,
                ..
            } => Movement {
                reason: Some(reason.clone()),
                reverses: Some(original.version),
                ..record(MovementKind::Reversed, from.as_ref(), to.as_ref(), amount)
            },
            _ => return None,
        })
    }
}

/// Decides the reversal of `original`, the movement the index holds at `version` (`None` if
/// it holds none), against the rules as they are now.
pub(super) fn reverse(
    token: &Token,
    investors: &FxHashMap<Id, Investor>,
    version: u64,
    original: Option<&Movement>,
    reason: &str,
    ctx: &Context,
) -> Result<Change> {
    let reason = bounded_text("reason", reason, 1_000)?;
    let original = match original {
        Some(m) if m.version == version && version <= token.version => m,
        _ => {
            return Err(Error::not_found(
                "movement_not_found",
                format!("{} has no movement at version {version}", token.spec.symbol),
            )
            .at("version"));
        }
    };
    if original.kind == MovementKind::Reversed {
        return Err(Error::conflict(
            "reversal_not_reversible",
            format!("movement {version} is itself a reversal: make a new movement to undo it"),
        )
        .at("version"));
    }
    if let Some(by) = token.reversed.get(&version) {
        return Err(Error::conflict(
            "already_reversed",
            format!("movement {version} was already reversed (by movement {by})"),
        )
        .at("version"));
    }
    // The other way: who got the tokens gives them back, who gave them gets them back.
    let (from, to) = (original.to.clone(), original.from.clone());
    compliance::check_reversal(
        token,
        investors,
        from.as_ref(),
        to.as_ref(),
        original.amount,
        ctx,
    )?;
    Ok(Change::Reversed {
        token_id: token.spec.id.clone(),
        original: original.clone(),
        from,
        to,
        amount: original.amount,
        reason,
    })
}
