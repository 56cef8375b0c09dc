//! Share classes within a token (ERC-1400's partitions; ERC-3643's per-class compliance).
//!
//! A token's units are in its **default class** unless a movement names one of the classes an
//! agent defined (for example `A` and `B` shares, or a locked and a free tranche). Every
//! movement stays within its class: a holder's balance of a class is what they received in it
//! minus what they gave from it. A holding keeps its totals (balance, held, frozen amount,
//! lock-ups, limits), on which the token's own rules count as before, and beside them the
//! balance and held amount of each named class; the default class has the rest.
//!
//! A class carries its own rules on top of the token's: eligibility (accreditation,
//! countries), a maximum balance and supply, and a lock-up until a date. Each is checked at the
//! place of the token's rule with the same reason code, and its message names the class.
//!
//! Moving units from one class to another in a holding is a **conversion**: an agent's
//! operation with its own event, checked against the receiving class's rules.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{Change, Investor, Token, compliance};
use crate::{Amount, Country, Error, Id, Result, Timestamp, bounded_text};

/// The most classes one token may define.
pub const MAX_CLASSES: usize = 16;
/// What views call the default class; no defined class may take the name.
pub const DEFAULT_CLASS: &str = "default";

/// A class's own rules, checked on top of the token's. Absent limits do not apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassRules {
    /// Only accredited investors may receive units of the class.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_accreditation: bool,
    /// If present, only investors from these countries may receive units of the class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_countries: Option<BTreeSet<Country>>,
    /// Investors from these countries may not receive units of the class.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub denied_countries: BTreeSet<Country>,
    /// The most of the class one investor may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_balance: Option<Amount>,
    /// The most of the class that may exist (within the token's own cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_supply: Option<Amount>,
    /// Until then, no investor's own transfer (nor hold) takes units of the class.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub locked_until: Option<Timestamp>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A class as an agent defined it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareClass {
    pub id: Id,
    pub name: String,
    #[serde(default)]
    pub rules: ClassRules,
}

/// A defined class and how much of it exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassState {
    #[serde(flatten)]
    pub class: ShareClass,
    pub supply: Amount,
}

/// One holder's part of one named class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassPosition {
    pub balance: Amount,
    /// Reserved by pending holds of the class.
    #[serde(default)]
    pub held: Amount,
}

impl ClassRules {
    fn validate(&self) -> Result<()> {
        compliance::country_lists_bounded(self.allowed_countries.as_ref(), &self.denied_countries)?;
        for (field, limit) in [
            ("rules.max_balance", self.max_balance),
            ("rules.max_supply", self.max_supply),
        ] {
            if limit.is_some_and(|a| a.is_zero() || a > super::MAX_SUPPLY) {
                return Err(Error::invalid(field, "a limit is between 1 and 10^36"));
            }
        }
        Ok(())
    }
}

/// Whether `id` may name a class: 1-32 letters, digits, `-` or `_`, and not `default` in any
/// case.
pub fn valid_class_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !id.eq_ignore_ascii_case(DEFAULT_CLASS)
}

/// The class a request names, as events carry it: `None` for the default class (named by
/// nothing, or by `default` in any case).
pub fn normalized(class: Option<Id>) -> Option<Id> {
    class.filter(|c| !c.eq_ignore_ascii_case(DEFAULT_CLASS))
}

/// Reads a class's rules where `null` means none of its own, as an absent field does.
pub fn deserialize_rules<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<ClassRules, D::Error> {
    Option::<ClassRules>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// Reads an operation's class as [`normalized`] says: `default` is the default class.
pub fn deserialize_class<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Id>, D::Error> {
    Option::<Id>::deserialize(deserializer).map(normalized)
}

/// The named class `class` of `token`, if one is named: refused if the token has no such class.
pub(super) fn existing<'a>(
    token: &'a Token,
    class: Option<&Id>,
    field: &'static str,
) -> Result<Option<&'a ClassState>> {
    let Some(class) = class else {
        return Ok(None);
    };
    token.classes.get(class).map(Some).ok_or_else(|| {
        Error::not_found(
            "class_not_found",
            format!("{} has no class {class}", token.spec.symbol),
        )
        .at(field)
    })
}

/// Decides the definition of a class, or a change of its name or rules.
pub(super) fn define(token: &Token, id: &Id, name: &str, rules: &ClassRules) -> Result<Change> {
    if !valid_class_id(id) {
        return Err(Error::invalid(
            "class",
            "a class is named by 1-32 letters, digits, '-' or '_', and not 'default'",
        ));
    }
    let name = bounded_text("name", name, 200)?;
    rules.validate()?;
    if !token.classes.contains_key(id) && token.classes.len() >= MAX_CLASSES {
        return Err(Error::conflict(
            "too_many_classes",
            format!("{} already has {MAX_CLASSES} classes", token.spec.symbol),
        )
        .at("class"));
    }
    if let (Some(existing), Some(max)) = (token.classes.get(id), rules.max_supply)
        && existing.supply > max
    {
        return Err(Error::conflict(
            "class_supply_above_cap",
            format!(
                "{} of class {id} already exists, more than the cap of {max} asked",
                existing.supply
            ),
        )
        .at("rules.max_supply"));
    }
    Ok(Change::ClassDefined {
        token_id: token.spec.id.clone(),
        class: ShareClass {
            id: id.clone(),
            name,
            rules: rules.clone(),
        },
    })
}

/// What a conversion asks: `amount` of `investor_id`'s units from one class to another.
pub(super) struct Conversion<'a> {
    pub investor_id: &'a Id,
    pub from_class: Option<&'a Id>,
    pub to_class: Option<&'a Id>,
    pub amount: Amount,
    pub reason: &'a str,
}

/// Decides a conversion: an agent's operation, which keeps the holding's total (so a frozen
/// amount stays covered). It stops at a pause and at the holder's full freeze; it needs the
/// units in the class they leave and not on hold there, and the holder eligible for the class
/// they join, within its maximum balance and supply. Lock-ups do not stop it: the agent
/// decides, as for a forced transfer.
pub(super) fn convert(
    token: &Token,
    investors: &FxHashMap<Id, Investor>,
    conversion: Conversion<'_>,
) -> Result<Change> {
    let Conversion {
        investor_id,
        from_class,
        to_class,
        amount,
        reason,
    } = conversion;
    if amount.is_zero() {
        return Err(Error::invalid("amount", "amount must be greater than zero"));
    }
    if from_class == to_class {
        return Err(Error::invalid(
            "to_class",
            "a conversion goes to another class",
        ));
    }
    let reason = bounded_text("reason", reason, 1_000)?;
    let holder = investors.get(investor_id).ok_or_else(|| {
        Error::not_found(
            "investor_not_found",
            format!("investor {investor_id} does not exist"),
        )
        .at("investor_id")
    })?;
    existing(token, from_class, "from_class")?;
    let joining = existing(token, to_class, "to_class")?;
    compliance::check_conversion(token, holder, from_class, joining, amount)?;
    Ok(Change::Converted {
        token_id: token.spec.id.clone(),
        investor_id: investor_id.clone(),
        from_class: from_class.cloned(),
        to_class: to_class.cloned(),
        amount,
        reason,
    })
}

/// Each class's balance and held amount in a holding, the default class's included (as
/// [`DEFAULT_CLASS`]) when it is not empty: what views show of a token with classes.
pub fn breakdown(holding: &super::Holding) -> BTreeMap<String, ClassPosition> {
    let mut classes: BTreeMap<String, ClassPosition> = holding
        .classes
        .iter()
        .filter(|(_, p)| !p.balance.is_zero() || !p.held.is_zero())
        .map(|(id, p)| (id.to_string(), *p))
        .collect();
    let default = holding.position(None);
    if !default.balance.is_zero() || !default.held.is_zero() {
        classes.insert(DEFAULT_CLASS.to_owned(), default);
    }
    classes
}
