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
    /// Units of one holder moved from one share class to another.
    Converted,
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
    /// The share class moved (absent: the default class); a conversion's class left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Id>,
    /// A conversion's class joined (absent: the default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_class: Option<Id>,
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
            class: None,
            to_class: None,
        };
        let class = change_class(change);
        Some(match change {
            Change::Issued { to, amount, .. } => Movement {
                class,
                ..record(MovementKind::Issued, None, Some(to), amount)
            },
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
                class,
                ..record(MovementKind::Transferred, Some(from), Some(to), amount)
            },
            Change::Redeemed { from, amount, .. } => Movement {
                class,
                ..record(MovementKind::Redeemed, Some(from), None, amount)
            },
            Change::HoldPosted {
                hold_id,
                from,
                to,
                amount,
                ..
            } if !amount.is_zero() => Movement {
                hold_id: Some(hold_id.clone()),
                class,
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
                class,
                ..record(MovementKind::Reversed, from.as_ref(), to.as_ref(), amount)
            },
            Change::Converted {
                investor_id,
                from_class,
                to_class,
                amount,
                reason,
                ..
            } => Movement {
                reason: Some(reason.clone()),
                class: from_class.clone(),
                to_class: to_class.clone(),
                ..record(
                    MovementKind::Converted,
                    Some(investor_id),
                    Some(investor_id),
                    amount,
                )
            },
            _ => return None,
        })
    }
}

/// The share class a movement's change moves (`None`: the default class).
fn change_class(change: &Change) -> Option<Id> {
    match change {
        Change::Issued { class, .. }
        | Change::Transferred { class, .. }
        | Change::Redeemed { class, .. }
        | Change::HoldPosted { class, .. }
        | Change::Reversed { class, .. } => class.clone(),
        _ => None,
    }
}

impl Movement {
    /// The record as an index row: a compact binary form, written with every movement, so it
    /// must cost little (`[1, kind, flags]`, version, amount, time in nanoseconds, then the
    /// present strings each after its 2-byte length, the reversed version, then the share
    /// classes, each after a 2-byte length, where the flags say so).
    pub fn to_row(&self) -> Vec<u8> {
        let mut row = Vec::with_capacity(96);
        let kind = match self.kind {
            MovementKind::Issued => 0u8,
            MovementKind::Transferred => 1,
            MovementKind::Redeemed => 2,
            MovementKind::HoldPosted => 3,
            MovementKind::Reversed => 4,
            MovementKind::Converted => 5,
        };
        let flags = u8::from(self.forced)
            | u8::from(self.from.is_some()) << 1
            | u8::from(self.to.is_some()) << 2
            | u8::from(self.reason.is_some()) << 3
            | u8::from(self.hold_id.is_some()) << 4
            | u8::from(self.reverses.is_some()) << 5
            | u8::from(self.class.is_some()) << 6
            | u8::from(self.to_class.is_some()) << 7;
        row.extend_from_slice(&[1, kind, flags]);
        row.extend_from_slice(&self.version.to_le_bytes());
        row.extend_from_slice(&self.amount.0.to_le_bytes());
        row.extend_from_slice(&self.at.unix_timestamp_nanos().to_le_bytes());
        let mut text = |s: &str| {
            // Ids and reasons are bounded far below 64 KiB.
            let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
            row.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            row.extend_from_slice(bytes);
        };
        text(&self.actor);
        for s in [&self.from, &self.to, &self.hold_id].into_iter().flatten() {
            text(s);
        }
        if let Some(reason) = &self.reason {
            text(reason);
        }
        if let Some(reverses) = self.reverses {
            row.extend_from_slice(&reverses.to_le_bytes());
        }
        for class in [&self.class, &self.to_class].into_iter().flatten() {
            row.extend_from_slice(&(class.len() as u16).to_le_bytes());
            row.extend_from_slice(class.as_bytes());
        }
        row
    }

    /// A record read back from its row (its `reversed_by` is another row's); `None` if the
    /// bytes are not one.
    pub fn from_row(row: &[u8]) -> Option<Movement> {
        let mut at = 0usize;
        let mut take = |n: usize| {
            let bytes = row.get(at..at + n)?;
            at += n;
            Some(bytes)
        };
        let head = take(3)?;
        if head[0] != 1 {
            return None;
        }
        let (kind, flags) = (head[1], head[2]);
        let version = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let amount = u128::from_le_bytes(take(16)?.try_into().ok()?);
        let nanos = i128::from_le_bytes(take(16)?.try_into().ok()?);
        let mut text = || -> Option<String> {
            let len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
            String::from_utf8(take(len)?.to_vec()).ok()
        };
        let actor = text()?;
        let mut optional = |bit: u8| -> Option<Option<String>> {
            if flags & (1 << bit) == 0 {
                Some(None)
            } else {
                text().map(Some)
            }
        };
        let from = optional(1)?;
        let to = optional(2)?;
        let hold_id = optional(4)?;
        let reason = optional(3)?;
        let reverses = match flags & (1 << 5) {
            0 => None,
            _ => Some(u64::from_le_bytes(take(8)?.try_into().ok()?)),
        };
        let mut class = |bit: u8| -> Option<Option<Id>> {
            if flags & (1 << bit) == 0 {
                return Some(None);
            }
            let len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
            String::from_utf8(take(len)?.to_vec())
                .ok()
                .map(|c| Some(Id::from(c)))
        };
        let class_moved = class(6)?;
        let to_class = class(7)?;
        Some(Movement {
            version,
            kind: match kind {
                0 => MovementKind::Issued,
                1 => MovementKind::Transferred,
                2 => MovementKind::Redeemed,
                3 => MovementKind::HoldPosted,
                4 => MovementKind::Reversed,
                5 => MovementKind::Converted,
                _ => return None,
            },
            from: from.map(Id::from),
            to: to.map(Id::from),
            amount: Amount(amount),
            at: Timestamp::from_unix_timestamp_nanos(nanos).ok()?,
            actor: Id::from(actor),
            forced: flags & 1 != 0,
            reason,
            hold_id: hold_id.map(Id::from),
            reverses,
            reversed_by: None,
            class: class_moved,
            to_class,
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
    if original.kind == MovementKind::Converted {
        return Err(Error::conflict(
            "conversion_not_reversible",
            format!("movement {version} is a conversion: convert the units back to undo it"),
        )
        .at("version"));
    }
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
        original.class.as_ref(),
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
        class: original.class.clone(),
    })
}
