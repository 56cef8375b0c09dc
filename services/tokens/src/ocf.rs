//! `GET /v1/tokens/{token_id}/ocf`: the cap table and its history in Open Cap Format 1.2.0
//! (<https://github.com/Open-Cap-Table-Coalition/Open-Cap-Format-OCF>).
//!
//! The token class is one stock class; every investor whose balance ever moved up to `as_of`
//! is a stakeholder; every movement up to then (read from the index of the token's
//! partition, see `token::reversal`) becomes OCF transactions over **securities**. OCF
//! positions are securities, not balances, so each holder's tokens are kept as lots, oldest
//! first: an issuance creates a security; a transfer takes from the sender's oldest lots, each
//! taken one a `TX_STOCK_TRANSFER` whose resulting security is issued to the receiver and
//! whose remainder, if any, is issued back to the sender as its balance security; a redemption
//! is a `TX_STOCK_CANCELLATION` of the same kind. Posted holds and reversals are the movements
//! they are (a reversed issuance is a cancellation, a reversed redemption an issuance).

use std::collections::{BTreeSet, VecDeque};

use axum::{extract::State, http::StatusCode, response::Response};
use libertum_domain::{
    Amount, Id, Timestamp,
    token::{self, MovementKind, keys},
};
use libertum_platform::{
    ApiError, Problem,
    auth::{Operation, Principal},
    extract::{Path, Query},
};
use libertum_store::Engine;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::IntoParams;

use crate::{
    api::{JSON_PROBLEM, token_not_found},
    state::TokensState,
};

type AppState = Engine<TokensState>;

/// OCF numbers carry at most 10 decimal places.
const MAX_DECIMALS: u8 = 10;
const STAKEHOLDERS: &str = "Stakeholders.ocf.json";
const STOCK_CLASSES: &str = "StockClasses.ocf.json";
const TRANSACTIONS: &str = "Transactions.ocf.json";

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OcfQuery {
    /// RFC 3339: the cap table at the end of this moment (default: now).
    pub as_of: Option<String>,
}

/// `units` of a token with `decimals` as an exact decimal number.
fn decimal(units: u128, decimals: u8) -> String {
    if decimals == 0 {
        return units.to_string();
    }
    let scale = 10u128.pow(u32::from(decimals));
    let fraction = format!("{:0width$}", units % scale, width = decimals as usize);
    let fraction = fraction.trim_end_matches('0');
    match fraction {
        "" => (units / scale).to_string(),
        f => format!("{}.{f}", units / scale),
    }
}

/// The number of decimal places of `currency`'s minor unit (ISO 4217).
fn minor_digits(currency: &str) -> u8 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

#[derive(Serialize)]
struct Monetary {
    amount: String,
    currency: String,
}

impl Monetary {
    fn of(minor_units: Amount, currency: &str) -> Monetary {
        Monetary {
            amount: decimal(minor_units.0, minor_digits(currency)),
            currency: currency.to_owned(),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "object_type")]
enum Transaction {
    #[serde(rename = "TX_STOCK_ISSUANCE")]
    Issuance {
        id: String,
        date: String,
        security_id: String,
        custom_id: String,
        stakeholder_id: String,
        stock_class_id: String,
        share_price: std::sync::Arc<Monetary>,
        quantity: String,
        security_law_exemptions: [(); 0],
        stock_legend_ids: [(); 0],
        #[serde(skip_serializing_if = "Option::is_none")]
        comments: Option<[String; 1]>,
    },
    #[serde(rename = "TX_STOCK_TRANSFER")]
    Transfer {
        id: String,
        date: String,
        security_id: String,
        quantity: String,
        resulting_security_ids: [String; 1],
        #[serde(skip_serializing_if = "Option::is_none")]
        balance_security_id: Option<String>,
        comments: [String; 1],
    },
    #[serde(rename = "TX_STOCK_CONVERSION")]
    Conversion {
        id: String,
        date: String,
        security_id: String,
        quantity_converted: String,
        resulting_security_ids: [String; 1],
        #[serde(skip_serializing_if = "Option::is_none")]
        balance_security_id: Option<String>,
        comments: [String; 1],
    },
    #[serde(rename = "TX_STOCK_CANCELLATION")]
    Cancellation {
        id: String,
        date: String,
        security_id: String,
        quantity: String,
        reason_text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        balance_security_id: Option<String>,
        comments: [String; 1],
    },
}

#[derive(Serialize)]
struct Items<'a, T> {
    file_type: &'static str,
    items: &'a [T],
}

#[derive(Serialize)]
struct Name<'a> {
    legal_name: &'a str,
}

#[derive(Serialize)]
struct Stakeholder<'a> {
    object_type: &'static str,
    id: &'a str,
    name: Name<'a>,
    stakeholder_type: &'static str,
    issuer_assigned_id: &'a str,
}

/// Turns movements into OCF transactions over securities, keeping each holder's lots.
struct Securities<'a> {
    token: &'a token::Token,
    price: std::sync::Arc<Monetary>,
    /// Each holder's securities of each share class (`None`: the default class), oldest first.
    lots: std::collections::HashMap<Holder, VecDeque<(String, u128)>>,
    transactions: Vec<Transaction>,
    next_security: u64,
    next_transaction: u64,
}

impl Securities<'_> {
    fn security(&mut self) -> String {
        self.next_security += 1;
        format!("{}-{}", self.token.spec.symbol, self.next_security)
    }

    fn transaction(&mut self) -> String {
        self.next_transaction += 1;
        format!("{}-tx-{}", self.token.spec.id, self.next_transaction)
    }

    fn quantity(&self, units: u128) -> String {
        decimal(units, self.token.spec.decimals)
    }

    /// Issues a new security of `units` to `to`; its id.
    fn issue(&mut self, to: &Holder, units: u128, date: &str, comment: Option<String>) -> String {
        let security_id = self.security();
        self.issue_as(security_id.clone(), to, units, date, comment, false);
        security_id
    }

    /// Issues security `security_id` of `units` to `to`, as their newest lot, or their oldest
    /// (`first`: the rest of a lot they were taken from).
    fn issue_as(
        &mut self,
        security_id: String,
        to: &Holder,
        units: u128,
        date: &str,
        comment: Option<String>,
        first: bool,
    ) {
        let (investor, class) = to;
        let id = self.transaction();
        self.transactions.push(Transaction::Issuance {
            id,
            date: date.to_owned(),
            custom_id: security_id.clone(),
            security_id: security_id.clone(),
            stakeholder_id: investor.to_string(),
            stock_class_id: stock_class_id(self.token, class.as_ref()),
            share_price: self.price.clone(),
            quantity: self.quantity(units),
            security_law_exemptions: [],
            stock_legend_ids: [],
            comments: comment.map(|c| [c]),
        });
        let lots = self.lots.entry(to.clone()).or_default();
        match first {
            true => lots.push_front((security_id, units)),
            false => lots.push_back((security_id, units)),
        }
    }

    /// Takes `units` from `from`'s oldest lots, to `to` (a transfer, or a conversion when `to`
    /// is `from` in another class) or out of the supply (a cancellation, when `to` is `None`).
    fn take(
        &mut self,
        from: &Holder,
        to: Option<&Holder>,
        units: u128,
        date: &str,
        comment: &str,
        reason: &str,
    ) -> Result<(), ApiError> {
        let converts = to.is_some_and(|to| to.0 == from.0);
        let mut left = units;
        while left > 0 {
            let Some((security_id, lot)) = self.lots.get_mut(from).and_then(VecDeque::pop_front)
            else {
                return Err(ApiError::unavailable(format!(
                    "the movements recorded for {} do not add up: {} had less than {units} ({comment})",
                    self.token.spec.symbol, from.0
                )));
            };
            let taken = left.min(lot);
            left -= taken;
            let id = self.transaction();
            let balance = (taken < lot).then(|| self.security());
            let resulting = to.map(|_| self.security());
            let transaction = match &resulting {
                Some(resulting) if converts => Transaction::Conversion {
                    id,
                    date: date.to_owned(),
                    security_id: security_id.clone(),
                    quantity_converted: self.quantity(taken),
                    resulting_security_ids: [resulting.clone()],
                    balance_security_id: balance.clone(),
                    comments: [comment.to_owned()],
                },
                Some(resulting) => Transaction::Transfer {
                    id,
                    date: date.to_owned(),
                    security_id: security_id.clone(),
                    quantity: self.quantity(taken),
                    resulting_security_ids: [resulting.clone()],
                    balance_security_id: balance.clone(),
                    comments: [comment.to_owned()],
                },
                None => Transaction::Cancellation {
                    id,
                    date: date.to_owned(),
                    security_id: security_id.clone(),
                    quantity: self.quantity(taken),
                    reason_text: reason.to_owned(),
                    balance_security_id: balance.clone(),
                    comments: [comment.to_owned()],
                },
            };
            self.transactions.push(transaction);
            if let (Some(to), Some(resulting)) = (to, resulting) {
                self.issue_as(resulting, to, taken, date, None, false);
            }
            if let Some(balance_id) = balance {
                // The rest stays the sender's, as a security of its own, first in line.
                self.issue_as(balance_id, from, lot - taken, date, None, true);
            }
        }
        Ok(())
    }

    fn movement(&mut self, m: &token::Movement) -> Result<(), ApiError> {
        let date = m.at.date().to_string();
        let comment = format!("movement {} ({:?})", m.version, m.kind).to_lowercase();
        let units = m.amount.0;
        let of = |investor: &Id| (investor.clone(), m.class.clone());
        match (&m.from, &m.to) {
            (Some(from), Some(to)) if m.kind == MovementKind::Converted => {
                let joined = (to.clone(), m.to_class.clone());
                self.take(&of(from), Some(&joined), units, &date, &comment, "")?
            }
            (None, Some(to)) => {
                self.issue(&of(to), units, &date, Some(comment));
            }
            (Some(from), Some(to)) => {
                self.take(&of(from), Some(&of(to)), units, &date, &comment, "")?
            }
            (Some(from), None) => {
                let reason = match m.kind {
                    MovementKind::Reversed => "issuance reversed",
                    _ => "redeemed by the issuer",
                };
                self.take(&of(from), None, units, &date, &comment, reason)?
            }
            (None, None) => {}
        }
        Ok(())
    }
}

/// A holder of one share class (`None`: the default class).
type Holder = (Id, Option<Id>);

/// The OCF stock class of a share class: the token's id for its default class,
/// `{token}.{class}` for a named one.
fn stock_class_id(token: &token::Token, class: Option<&Id>) -> String {
    match class {
        Some(class) => format!("{}.{class}", token.spec.id),
        None => token.spec.id.to_string(),
    }
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The token's cap table and its history up to `as_of` in Open Cap Format 1.2.0, as one JSON
/// bundle: `manifest` (the OCF manifest) and `files`, each file's exact text by the name the
/// manifest gives it (with its MD5): stakeholders, the stock class, and the transactions.
/// Write each out to get the OCF files.
#[utoipa::path(get, path = "/{token_id}/ocf", tag = "tokens", params(("token_id" = String, Path), OcfQuery),
    responses((status = 200, description = "`{\"manifest\": {...}, \"files\": {\"Stakeholders.ocf.json\": \"...\", ...}}`", body = Object),
        (status = 404, body = Problem, content_type = JSON_PROBLEM),
        (status = 409, body = Problem, content_type = JSON_PROBLEM, description = "`issuer_not_known`: the asset's registration has not reached the tokens service; `ocf_precision_exceeded`: more than 10 decimals"),
        (status = 422, body = Problem, content_type = JSON_PROBLEM)))]
pub(crate) async fn export(
    State(engine): State<AppState>,
    principal: Principal,
    Path(token_id): Path<String>,
    Query(q): Query<OcfQuery>,
) -> Result<Response, ApiError> {
    principal.allow(Operation::HoldersList)?;
    let now = time::OffsetDateTime::now_utc();
    let as_of: Timestamp = match q.as_of.as_deref() {
        None => now,
        Some(text) => Timestamp::parse(text, &Rfc3339).map_err(|_| {
            ApiError::invalid(
                "as_of",
                "as_of must be an RFC 3339 time such as 2026-06-30T23:59:59Z",
            )
        })?,
    };
    let (token, issuer) = {
        let state = engine.read().await;
        let token = state
            .0
            .token(&token_id)
            .ok_or_else(|| token_not_found(&token_id))?
            .clone();
        let issuer = state.0.asset_issuer(&token.spec.asset_id).cloned();
        (token, issuer)
    };
    let issuer = issuer.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "issuer_not_known",
            format!(
                "the registration of asset {} (its legal owner and country) has not reached the tokens service",
                token.spec.asset_id
            ),
        )
    })?;
    if token.spec.decimals > MAX_DECIMALS {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ocf_precision_exceeded",
            format!(
                "{} has {} decimals: Open Cap Format numbers carry at most {MAX_DECIMALS}",
                token.spec.symbol, token.spec.decimals
            ),
        ));
    }
    // Every movement up to as_of, from the index, in order.
    let currency = token.spec.currency.to_string();
    let mut securities = Securities {
        token: &token,
        price: std::sync::Arc::new(Monetary::of(token.spec.unit_price, &currency)),
        lots: Default::default(),
        transactions: Vec::new(),
        next_security: 0,
        next_transaction: 0,
    };
    let mut stakeholders: BTreeSet<Id> = BTreeSet::new();
    // The share classes any movement up to `as_of` was in.
    let mut classes_moved: BTreeSet<Id> = BTreeSet::new();
    let mut after = 0u64;
    loop {
        let (low, high) = keys::movements_after(&token_id, after);
        let rows = crate::movements::rows_of(&engine, &token_id, &low, &high, 10_000).await?;
        let more = rows.len() == 10_000;
        for (key, bytes) in &rows {
            let m = token::Movement::from_row(bytes)
                .ok_or_else(|| ApiError::unavailable(format!("index row {key} is unreadable")))?;
            after = m.version;
            if m.at > as_of {
                continue;
            }
            stakeholders.extend(m.from.iter().chain(&m.to).cloned());
            classes_moved.extend(m.class.iter().chain(&m.to_class).cloned());
            securities.movement(&m)?;
        }
        if !more {
            break;
        }
    }
    let stakeholder_items: Vec<Stakeholder> = stakeholders
        .iter()
        .map(|id| Stakeholder {
            object_type: "STAKEHOLDER",
            id: id.as_str(),
            name: Name {
                legal_name: id.as_str(),
            },
            stakeholder_type: "INDIVIDUAL",
            issuer_assigned_id: id.as_str(),
        })
        .collect();
    // One stock class per share class: the default class first, named after the token.
    let stock_class = |id: String, name: &str, authorized: Amount| {
        serde_json::json!({
            "object_type": "STOCK_CLASS",
            "id": id,
            "name": name,
            "class_type": "COMMON",
            "default_id_prefix": format!("{}-", token.spec.symbol),
            "initial_shares_authorized": decimal(authorized.0, token.spec.decimals),
            "votes_per_share": "1",
            "seniority": "1",
            "price_per_share": &*securities.price,
        })
    };
    let mut stock_classes = vec![stock_class(
        stock_class_id(&token, None),
        &token.spec.name,
        token.spec.max_supply,
    )];
    // As of an earlier moment, only the classes that had units by then (the registry keeps
    // no date of a class's definition); now, every class defined.
    let listed = token
        .classes
        .values()
        .filter(|state| q.as_of.is_none() || classes_moved.contains(&state.class.id));
    for state in listed {
        let class = &state.class;
        stock_classes.push(stock_class(
            stock_class_id(&token, Some(&class.id)),
            &class.name,
            class.rules.max_supply.unwrap_or(token.spec.max_supply),
        ));
    }
    let encode = |e: serde_json::Error| ApiError::internal(e);
    let files = [
        (
            STAKEHOLDERS,
            serde_json::to_string(&Items {
                file_type: "OCF_STAKEHOLDERS_FILE",
                items: &stakeholder_items,
            })
            .map_err(encode)?,
        ),
        (
            STOCK_CLASSES,
            serde_json::to_string(&Items {
                file_type: "OCF_STOCK_CLASSES_FILE",
                items: &stock_classes,
            })
            .map_err(encode)?,
        ),
        (
            TRANSACTIONS,
            serde_json::to_string(&Items {
                file_type: "OCF_TRANSACTIONS_FILE",
                items: &securities.transactions,
            })
            .map_err(encode)?,
        ),
    ];
    let reference =
        |name: &str, text: &str| serde_json::json!([{"filepath": name, "md5": md5_hex(text)}]);
    let manifest = serde_json::json!({
        "ocf_version": "1.2.0",
        "file_type": "OCF_MANIFEST_FILE",
        "issuer": {
            "object_type": "ISSUER",
            "id": token.spec.asset_id,
            "legal_name": issuer.legal_owner,
            "dba": issuer.name,
            "formation_date": token.created_at.date().to_string(),
            "country_of_formation": issuer.country.as_str(),
            "comments": ["The asset's legal owner and the asset's country, as registered; formation_date is the token class's creation (the registry does not record the issuer's own)."],
        },
        "as_of": as_of.date().to_string(),
        "generated_at": now.format(&Rfc3339).unwrap_or_default(),
        "comments": [format!("Libertum token {} ({}). Stakeholders are named by their investor id: the platform keeps no names.", token.spec.id, token.spec.symbol)],
        "stock_plans_files": [],
        "stock_legend_templates_files": [],
        "stock_classes_files": reference(STOCK_CLASSES, &files[1].1),
        "vesting_terms_files": [],
        "valuations_files": [],
        "transactions_files": reference(TRANSACTIONS, &files[2].1),
        "stakeholders_files": reference(STAKEHOLDERS, &files[0].1),
    });
    #[derive(Serialize)]
    struct Bundle<'a> {
        manifest: serde_json::Value,
        files: std::collections::BTreeMap<&'a str, &'a str>,
    }
    let body = serde_json::to_vec(&Bundle {
        manifest,
        files: files.iter().map(|(k, v)| (*k, v.as_str())).collect(),
    })
    .map_err(encode)?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_and_trimmed() {
        assert_eq!(decimal(1_000, 0), "1000");
        assert_eq!(decimal(1_500, 2), "15");
        assert_eq!(decimal(1_505, 2), "15.05");
        assert_eq!(decimal(7, 10), "0.0000000007");
        assert_eq!(decimal(u128::MAX, 0), u128::MAX.to_string());
        assert_eq!(Monetary::of(Amount(25_000), "EUR").amount, "250");
        assert_eq!(Monetary::of(Amount(25_000), "JPY").amount, "25000");
        assert_eq!(Monetary::of(Amount(25_001), "KWD").amount, "25.001");
    }
}
