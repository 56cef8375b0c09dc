//! Request and response bodies of `/v1/tokens`.

use std::collections::{BTreeMap, BTreeSet};

use libertum_domain::{Amount, Country, Currency, Timestamp, token};
use serde::{Deserialize, Serialize};
use time::Date;
use utoipa::ToSchema;

/// A token's compliance rules. Absent limits do not apply.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesDto {
    /// If present, only investors from these countries (ISO 3166-1 alpha-2) may receive.
    #[schema(value_type = Option<Vec<String>>)]
    #[serde(default)]
    pub allowed_countries: Option<BTreeSet<Country>>,
    #[schema(value_type = Vec<String>)]
    #[serde(default)]
    pub denied_countries: BTreeSet<Country>,
    #[serde(default)]
    pub require_accreditation: bool,
    #[serde(default)]
    pub max_holders: Option<u64>,
    #[schema(value_type = Option<String>)]
    #[serde(default)]
    pub max_balance: Option<Amount>,
    /// Seconds after issuance before issued tokens can be transferred.
    #[serde(default)]
    pub lockup_seconds: u64,
    /// Most an investor may send per UTC day, in the token's smallest unit.
    #[schema(value_type = Option<String>)]
    #[serde(default)]
    pub daily_transfer_limit: Option<Amount>,
    /// Most an investor may send per UTC calendar month.
    #[schema(value_type = Option<String>)]
    #[serde(default)]
    pub monthly_transfer_limit: Option<Amount>,
    /// Most holders from each of these countries, e.g. `{"DE": 99}` (ERC-3643 country caps).
    #[schema(value_type = BTreeMap<String, u64>)]
    #[serde(default)]
    pub max_holders_by_country: BTreeMap<Country, u64>,
    /// Least a new holder from each of these countries receives by one movement, e.g.
    /// `{"FR": "100"}` (ERC-3643 minimum transfer by country).
    #[schema(value_type = BTreeMap<String, String>)]
    #[serde(default)]
    pub min_transfer_by_country: BTreeMap<Country, Amount>,
    /// Every investor's transfer or hold must match one an agent approved
    /// (`POST /v1/tokens/{id}/transfer-approvals`), which it uses up (ERC-3643 conditional
    /// transfers).
    #[serde(default)]
    pub transfer_approval_required: bool,
    /// Agents, by the subject of their bearer token, who may do only the listed operations on
    /// this token (`issue`, `redeem`, `pause`, ... as batch operations are named, plus
    /// `distribute` and `update_rules`); refused with `403 agent_restricted` otherwise.
    #[serde(default)]
    pub agent_restrictions: BTreeMap<String, BTreeSet<String>>,
}

impl From<RulesDto> for token::Rules {
    fn from(r: RulesDto) -> Self {
        token::Rules {
            allowed_countries: r.allowed_countries,
            denied_countries: r.denied_countries,
            require_accreditation: r.require_accreditation,
            max_holders: r.max_holders,
            max_balance: r.max_balance,
            lockup_seconds: r.lockup_seconds,
            daily_transfer_limit: r.daily_transfer_limit,
            monthly_transfer_limit: r.monthly_transfer_limit,
            max_holders_by_country: r.max_holders_by_country,
            min_transfer_by_country: r.min_transfer_by_country,
            transfer_approval_required: r.transfer_approval_required,
            agent_restrictions: r.agent_restrictions,
        }
    }
}

impl From<&token::Rules> for RulesDto {
    fn from(r: &token::Rules) -> Self {
        RulesDto {
            allowed_countries: r.allowed_countries.clone(),
            denied_countries: r.denied_countries.clone(),
            require_accreditation: r.require_accreditation,
            max_holders: r.max_holders,
            max_balance: r.max_balance,
            lockup_seconds: r.lockup_seconds,
            daily_transfer_limit: r.daily_transfer_limit,
            monthly_transfer_limit: r.monthly_transfer_limit,
            max_holders_by_country: r.max_holders_by_country.clone(),
            min_transfer_by_country: r.min_transfer_by_country.clone(),
            transfer_approval_required: r.transfer_approval_required,
            agent_restrictions: r.agent_restrictions.clone(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenForCreate {
    pub asset_id: String,
    /// 2-12 upper-case letters or digits, unique.
    #[schema(example = "FRIED123")]
    pub symbol: String,
    pub name: String,
    /// 0-18.
    pub decimals: u8,
    /// In the token's smallest unit.
    #[schema(value_type = String, example = "1000000")]
    pub max_supply: Amount,
    /// Price of one whole token in minor units of `currency`.
    #[schema(value_type = String, example = "10000")]
    pub unit_price: Amount,
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
    #[serde(default)]
    pub rules: RulesDto,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub asset_id: String,
    pub symbol: String,
    pub name: String,
    pub decimals: u8,
    #[schema(value_type = String)]
    pub max_supply: Amount,
    #[schema(value_type = String)]
    pub unit_price: Amount,
    #[schema(value_type = String)]
    pub currency: Currency,
    pub rules: RulesDto,
    pub paused: bool,
    #[schema(value_type = String)]
    pub total_supply: Amount,
    pub holders: u64,
    /// The share classes defined, beside the default class (see `PUT …/classes/{class}`).
    pub classes: Vec<ClassView>,
    /// Also the ETag; counts the token's events.
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

impl TokenView {
    /// The view as `principal` may see it: the agents a token restricts are named by the
    /// subjects of their bearer tokens, which are for staff only.
    pub fn seen_by(t: &token::Token, staff: bool) -> Self {
        let mut view = TokenView::from(t);
        if !staff {
            view.rules.agent_restrictions.clear();
            for class in &mut view.classes {
                class.supply = None;
            }
        }
        view
    }
}

impl From<&token::Token> for TokenView {
    fn from(t: &token::Token) -> Self {
        TokenView {
            id: t.spec.id.to_string(),
            asset_id: t.spec.asset_id.to_string(),
            symbol: t.spec.symbol.clone(),
            name: t.spec.name.clone(),
            decimals: t.spec.decimals,
            max_supply: t.spec.max_supply,
            unit_price: t.spec.unit_price,
            currency: t.spec.currency,
            rules: (&t.rules).into(),
            paused: t.paused,
            total_supply: t.total_supply,
            holders: t.holders,
            classes: t.classes.values().map(ClassView::from).collect(),
            version: t.version,
            created_at: t.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvestorForCreate {
    /// Reference into the identity provider; no personal data.
    pub identity_ref: String,
    #[schema(value_type = String, example = "DE")]
    pub country: Country,
    /// pending, verified, rejected or expired.
    #[schema(value_type = String, example = "verified")]
    pub kyc_status: token::KycStatus,
    /// Required when verified.
    #[schema(value_type = Option<String>, format = Date, example = "2027-12-31")]
    pub kyc_expires_on: Option<Date>,
    #[serde(default)]
    pub accredited: bool,
    pub wallet: Option<String>,
}

/// Fields to change; absent ones keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvestorForUpdate {
    pub identity_ref: Option<String>,
    #[schema(value_type = Option<String>)]
    pub country: Option<Country>,
    #[schema(value_type = Option<String>)]
    pub kyc_status: Option<token::KycStatus>,
    #[schema(value_type = Option<String>, format = Date)]
    pub kyc_expires_on: Option<Date>,
    pub accredited: Option<bool>,
    pub wallet: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvestorView {
    pub id: String,
    pub identity_ref: String,
    #[schema(value_type = String)]
    pub country: Country,
    #[schema(value_type = String)]
    pub kyc_status: token::KycStatus,
    #[schema(value_type = Option<String>, format = Date)]
    pub kyc_expires_on: Option<Date>,
    pub accredited: bool,
    pub wallet: Option<String>,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<&token::Investor> for InvestorView {
    fn from(i: &token::Investor) -> Self {
        let p = &i.profile;
        InvestorView {
            id: i.id.to_string(),
            identity_ref: p.identity_ref.clone(),
            country: p.country,
            kyc_status: p.kyc_status,
            kyc_expires_on: p.kyc_expires_on,
            accredited: p.accredited,
            wallet: p.wallet.clone(),
            version: i.version,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    pub to: String,
    #[schema(value_type = String, example = "1000")]
    pub amount: Amount,
    /// The share class (absent, or `default`: the token's default class).
    #[serde(default)]
    pub class: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    pub from: String,
    pub to: String,
    #[schema(value_type = String, example = "250")]
    pub amount: Amount,
    /// The share class (absent, or `default`: the token's default class).
    #[serde(default)]
    pub class: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForcedTransferRequest {
    pub from: String,
    pub to: String,
    #[schema(value_type = String)]
    pub amount: Amount,
    /// Why the agent moves tokens without the holder's consent; recorded in the event.
    pub reason: String,
    /// The share class (absent, or `default`: the token's default class).
    #[serde(default)]
    pub class: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    pub from: String,
    #[schema(value_type = String)]
    pub amount: Amount,
    /// The share class (absent, or `default`: the token's default class).
    #[serde(default)]
    pub class: Option<String>,
}

/// Freeze (or unfreeze) an investor fully, or only `amount` of their balance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeRequest {
    pub investor_id: String,
    #[schema(value_type = Option<String>)]
    pub amount: Option<Amount>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Up to 8,000 operations of one token, applied in order. Each is an object with `op` set to
/// issue, transfer, redeem, forced_transfer, freeze, unfreeze, freeze_amount, unfreeze_amount,
/// pause, unpause, place_hold, post_hold, void_hold, confirm_payment, reject_payment,
/// approve_transfer, revoke_transfer_approval, reverse, define_class or convert, and that
/// operation's fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// `all_or_nothing` (the default): one refusal refuses the whole batch, naming the
    /// operation, and nothing changes; the answer is an `OperationResult`. `independent`: each
    /// operation stands alone; the answer is a `BulkResult` with each one's outcome.
    #[serde(default)]
    #[schema(value_type = Option<BulkMode>)]
    pub mode: token::BatchMode,
    #[schema(value_type = Vec<BatchOperation>, min_items = 1, max_items = 8000)]
    pub operations: Vec<token::Operation>,
}

/// What a bulk request does when one of its operations is refused.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum BulkMode {
    AllOrNothing,
    Independent,
}

/// A batch's answer: an `OperationResult` in `all_or_nothing` mode, a `BulkResult` in
/// `independent` mode.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum BatchAnswer<'a> {
    AllOrNothing(OperationResult<'a>),
    Independent(BulkResult),
}

/// What an independent batch (or a chunk of an import) did, operation by operation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    pub token_id: String,
    /// The token's version after the batch.
    pub version: u64,
    #[schema(value_type = String)]
    pub total_supply: Amount,
    pub applied: usize,
    pub refused: usize,
    /// One per operation, in the request's order.
    pub results: Vec<OperationOutcome>,
}

/// One operation's outcome in a bulk request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OperationOutcome {
    /// The operation's place in the request, from 0.
    pub index: usize,
    /// `applied` or `refused`.
    pub status: String,
    /// Applied: the token's version its event made (the event's `subjectversion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Refused: the stable reason code, as a single request would get it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Refused: the field of the operation the refusal names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// One operation of a batch: `op` names it; the other fields are that operation's, as in its
/// own request. It documents `token::Operation`, which the body is parsed into.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[allow(dead_code)]
pub enum BatchOperation {
    Issue {
        to: String,
        #[schema(example = "1000")]
        amount: String,
        class: Option<String>,
    },
    Transfer {
        from: String,
        to: String,
        #[schema(example = "250")]
        amount: String,
        class: Option<String>,
    },
    Redeem {
        from: String,
        #[schema(example = "100")]
        amount: String,
        class: Option<String>,
    },
    ForcedTransfer {
        from: String,
        to: String,
        amount: String,
        reason: String,
        class: Option<String>,
    },
    Freeze {
        investor_id: String,
    },
    Unfreeze {
        investor_id: String,
    },
    FreezeAmount {
        investor_id: String,
        amount: String,
    },
    UnfreezeAmount {
        investor_id: String,
        amount: String,
    },
    Pause,
    Unpause,
    /// The hold's id is given by the service, as for a single hold: it is in the answer's
    /// `hold_placed` event.
    PlaceHold {
        from: String,
        to: String,
        amount: String,
        #[schema(format = DateTime)]
        expires_at: String,
        payment: Option<CashLegDto>,
        class: Option<String>,
    },
    PostHold {
        hold_id: String,
        amount: Option<String>,
    },
    VoidHold {
        hold_id: String,
        reason: String,
    },
    ConfirmPayment {
        hold_id: String,
        confirmation: String,
    },
    RejectPayment {
        hold_id: String,
        reason: String,
    },
    /// The approval's id is given by the service: it is in the answer's `transfer_approved`
    /// event.
    ApproveTransfer {
        from: String,
        to: String,
        amount: String,
        class: Option<String>,
    },
    RevokeTransferApproval {
        approval_id: String,
    },
    /// Reverses the movement that made the token's `version` (see `POST …/movements/{version}/reversal`);
    /// only a movement made before this batch.
    Reverse {
        version: u64,
        reason: String,
    },
    /// Defines a share class or changes its name and rules (see `PUT …/classes/{class}`).
    DefineClass {
        class: String,
        name: String,
        rules: Option<ClassRulesDto>,
    },
    /// Converts units of a holder from one class to another (see `POST …/conversions`).
    Convert {
        investor_id: String,
        from_class: Option<String>,
        to_class: Option<String>,
        amount: String,
        reason: String,
    },
}

/// The cash leg of a settlement against payment, paid outside the platform.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CashLegDto {
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
    /// Minor units of `currency`.
    #[schema(value_type = String, example = "2500000")]
    pub amount: Amount,
    /// The payer's reference for the payment (up to 200 characters).
    #[schema(example = "wire 2026-0042")]
    pub reference: String,
}

impl From<CashLegDto> for token::CashLeg {
    fn from(c: CashLegDto) -> Self {
        token::CashLeg {
            currency: c.currency,
            amount: c.amount,
            reference: c.reference,
        }
    }
}

/// Reserve `amount` of `from`'s balance for `to` until `expires_at`; with `payment`, a
/// settlement instruction that moves the tokens only when a payment agent confirms the cash.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    pub from: String,
    pub to: String,
    #[schema(value_type = String, example = "250")]
    pub amount: Amount,
    /// RFC 3339, in the future and within 366 days: the hold expires then if still pending.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    pub payment: Option<CashLegDto>,
    /// The share class (absent, or `default`: the token's default class).
    #[serde(default)]
    pub class: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldPostRequest {
    /// Part of the held amount to move (all of it if absent); the rest goes back to the sender.
    #[schema(value_type = Option<String>)]
    #[serde(default)]
    pub amount: Option<Amount>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldVoidRequest {
    /// Why (recorded in the event).
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentConfirmationRequest {
    /// The payment agent's reference of the received payment (up to 200 characters).
    pub confirmation: String,
}

/// A hold and what became of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoldView {
    pub id: String,
    pub token_id: String,
    pub from: String,
    pub to: String,
    #[schema(value_type = String)]
    pub amount: Amount,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    /// `pending`, `posted`, `voided` or `expired`.
    #[schema(example = "pending")]
    pub status: &'static str,
    /// What moved to the receiver.
    #[schema(value_type = String)]
    pub posted: Amount,
    /// What went back to the sender.
    #[schema(value_type = String)]
    pub released: Amount,
    pub payment: Option<CashLegDto>,
    pub payment_confirmation: Option<String>,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub placed_at: Timestamp,
    pub placed_by: String,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub closed_at: Option<Timestamp>,
    pub closed_by: Option<String>,
    /// The share class held (absent: the default class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

impl From<&token::HoldRecord> for HoldView {
    fn from(r: &token::HoldRecord) -> Self {
        HoldView {
            id: r.hold.id.to_string(),
            token_id: r.token_id.to_string(),
            from: r.hold.from.to_string(),
            to: r.hold.to.to_string(),
            amount: r.hold.amount,
            expires_at: r.hold.expires_at,
            status: r.status.as_str(),
            posted: r.posted,
            released: r.released,
            payment: r.hold.payment.as_ref().map(|p| CashLegDto {
                currency: p.currency,
                amount: p.amount,
                reference: p.reference.clone(),
            }),
            payment_confirmation: r.payment_confirmation.clone(),
            reason: r.reason.clone(),
            placed_at: r.placed_at,
            placed_by: r.placed_by.to_string(),
            closed_at: r.closed_at,
            closed_by: r.closed_by.as_ref().map(ToString::to_string),
            class: r.hold.class.as_ref().map(ToString::to_string),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DistributionRequest {
    /// Minor units of `currency`.
    #[schema(value_type = String, example = "100000")]
    pub total: Amount,
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
    /// Balances at the end of this moment decide the shares.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub record_date: Timestamp,
    pub memo: Option<String>,
}

/// What an operation did.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationResult<'a> {
    pub token_id: String,
    pub version: u64,
    #[schema(value_type = String)]
    pub total_supply: Amount,
    /// The events recorded, as they travel on the bus.
    #[schema(value_type = Vec<Object>)]
    pub events: &'a [token::Event],
}

/// The answer of the dry run: whether the transfer could happen now, and if not, which rule says no.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferCheck {
    pub allowed: bool,
    pub code: Option<String>,
    pub message: Option<String>,
    pub field: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HolderRow {
    pub investor_id: String,
    /// Pending holds included.
    #[schema(value_type = String)]
    pub balance: Amount,
    #[schema(value_type = String)]
    pub frozen_amount: Amount,
    /// Reserved by pending holds (latest tables only: history keeps balances).
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Amount>,
    pub frozen: bool,
    /// Share of the supply, percent, four decimals, truncated.
    #[schema(example = "12.5000")]
    pub percentage: String,
    /// Per share class, where the token has classes (latest tables only): the default
    /// class as `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<BTreeMap<String, ClassBalance>>,
}

/// One holder's part of one share class.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClassBalance {
    #[schema(value_type = String)]
    pub balance: Amount,
    /// Reserved by pending holds of the class.
    #[schema(value_type = String)]
    pub held: Amount,
}

/// Each class's part of a holding, where the token has classes.
pub fn class_balances(
    token: &token::Token,
    holding: &token::Holding,
) -> Option<BTreeMap<String, ClassBalance>> {
    (!token.classes.is_empty()).then(|| {
        token::class::breakdown(holding)
            .into_iter()
            .map(|(class, p)| {
                (
                    class,
                    ClassBalance {
                        balance: p.balance,
                        held: p.held,
                    },
                )
            })
            .collect()
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CapTable {
    pub token_id: String,
    /// The token's version the table reflects (latest tables only).
    pub version: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub as_of: Option<Timestamp>,
    #[schema(value_type = String)]
    pub total_supply: Amount,
    pub holders: Vec<HolderRow>,
    /// When the page is full and more holders follow: pass it as `after` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldingView {
    pub token_id: String,
    pub investor_id: String,
    #[schema(value_type = String)]
    pub balance: Amount,
    pub frozen: bool,
    #[schema(value_type = String)]
    pub frozen_amount: Amount,
    /// Reserved by pending holds: still in `balance`, promised to their receivers.
    #[schema(value_type = String)]
    pub held: Amount,
    /// Neither frozen nor held: what a redemption or an agent's forced transfer may take.
    #[schema(value_type = String)]
    pub available: Amount,
    /// Still under lock-up.
    #[schema(value_type = String)]
    pub locked: Amount,
    /// What the investor's own transfer may move now.
    #[schema(value_type = String)]
    pub transferable: Amount,
    #[schema(value_type = String)]
    pub sent_today: Amount,
    #[schema(value_type = String)]
    pub sent_this_month: Amount,
    /// Per share class, where the token has classes: the default class as `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<BTreeMap<String, ClassBalance>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AllocationView {
    pub investor_id: String,
    #[schema(value_type = String)]
    pub balance: Amount,
    #[schema(value_type = String)]
    pub amount: Amount,
    /// The holder was fully frozen when it was paid: the amount is held back in the ledger's
    /// `withheld:{investor}` account instead of reaching theirs.
    pub withheld: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DistributionView {
    pub id: String,
    pub token_id: String,
    #[schema(value_type = String)]
    pub total: Amount,
    #[schema(value_type = String)]
    pub currency: Currency,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub record_date: Timestamp,
    pub memo: Option<String>,
    pub allocations: Vec<AllocationView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `part / whole` in percent with four decimals, truncated, exact.
pub fn percentage(part: u128, whole: u128) -> String {
    if whole == 0 {
        return "0.0000".into();
    }
    // part * 10^6 / whole, truncated, on the 256-bit product: exact at every size.
    let (scaled, _) = libertum_domain::token::mul_div_rem(1_000_000, part.min(whole), whole);
    format!("{}.{:04}", scaled / 10_000, scaled % 10_000)
}

#[cfg(test)]
mod tests {
    use super::percentage;

    #[test]
    fn percentages_are_exact_and_truncated() {
        assert_eq!(percentage(1, 8), "12.5000");
        assert_eq!(percentage(1, 3), "33.3333");
        assert_eq!(percentage(5, 5), "100.0000");
        assert_eq!(percentage(0, 5), "0.0000");
        // Very large balances: exact truncation, not a rounded division.
        let supply = 10u128.pow(36) - 1;
        assert_eq!(percentage(supply / 2, supply), "49.9999");
        assert_eq!(percentage(supply, supply), "100.0000");
        assert_eq!(percentage(1, supply), "0.0000");
        assert_eq!(percentage(supply / 3, supply), "33.3333");
    }
}

/// Why a movement is reversed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReversalRequest {
    /// Why (1-1,000 characters, recorded in the event and the ledger's audit trail).
    pub reason: String,
}

/// A movement of tokens: an issuance, a transfer (forced or not), a redemption, a posted hold,
/// or a reversal of one of them. Named by the token's version its event made.
#[derive(Debug, Serialize, ToSchema)]
pub struct MovementView {
    pub token_id: String,
    /// The token's version its event made (the event's `subjectversion`).
    pub version: u64,
    /// `issued`, `transferred`, `redeemed`, `hold_posted`, `reversed` or `converted`.
    #[schema(example = "transferred")]
    pub kind: &'static str,
    /// Who gave the tokens (absent for an issuance).
    pub from: Option<String>,
    /// Who got them (absent for a redemption).
    pub to: Option<String>,
    #[schema(value_type = String)]
    pub amount: Amount,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub actor: String,
    pub forced: bool,
    pub reason: Option<String>,
    /// The hold a posting settled.
    pub hold_id: Option<String>,
    /// A reversal: the version of the movement it reverses.
    pub reverses: Option<u64>,
    /// Reversed: the version of its reversal.
    pub reversed_by: Option<u64>,
    /// The share class moved (absent: the default class); a conversion's class left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// A conversion's class joined (absent: the default class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_class: Option<String>,
}

impl MovementView {
    pub fn new(token_id: &str, m: &token::Movement) -> Self {
        MovementView {
            token_id: token_id.to_owned(),
            version: m.version,
            kind: match m.kind {
                token::MovementKind::Issued => "issued",
                token::MovementKind::Transferred => "transferred",
                token::MovementKind::Redeemed => "redeemed",
                token::MovementKind::HoldPosted => "hold_posted",
                token::MovementKind::Reversed => "reversed",
                token::MovementKind::Converted => "converted",
            },
            from: m.from.as_ref().map(ToString::to_string),
            to: m.to.as_ref().map(ToString::to_string),
            amount: m.amount,
            at: m.at,
            actor: m.actor.to_string(),
            forced: m.forced,
            reason: m.reason.clone(),
            hold_id: m.hold_id.as_ref().map(ToString::to_string),
            reverses: m.reverses,
            reversed_by: m.reversed_by,
            class: m.class.as_ref().map(ToString::to_string),
            to_class: m.to_class.as_ref().map(ToString::to_string),
        }
    }
}

/// One transfer an agent approves in advance: where the token's rules require approval, a
/// transfer (or hold) of exactly `amount` from `from` to `to` then passes once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferApprovalRequest {
    pub from: String,
    pub to: String,
    #[schema(value_type = String, example = "250")]
    pub amount: Amount,
    /// The share class approved (absent, or `default`: the default class): the transfer
    /// must name the same class.
    #[serde(default)]
    pub class: Option<String>,
}

/// An approval waiting to be used.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferApprovalView {
    pub id: String,
    pub token_id: String,
    pub from: String,
    pub to: String,
    #[schema(value_type = String)]
    pub amount: Amount,
    /// The share class approved (absent: the default class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

impl TransferApprovalView {
    pub fn new(token_id: &str, a: &token::TransferApproval) -> Self {
        TransferApprovalView {
            id: a.id.to_string(),
            token_id: token_id.to_owned(),
            from: a.from.to_string(),
            to: a.to.to_string(),
            amount: a.amount,
            class: a.class.as_ref().map(ToString::to_string),
        }
    }
}

/// A share class's own rules, checked on top of the token's (each with the token rule's
/// reason code). Absent limits do not apply.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassRulesDto {
    /// Only accredited investors may receive units of the class.
    #[serde(default)]
    pub require_accreditation: bool,
    /// If present, only investors from these countries may receive units of the class.
    #[schema(value_type = Option<Vec<String>>)]
    #[serde(default)]
    pub allowed_countries: Option<BTreeSet<Country>>,
    #[schema(value_type = Vec<String>)]
    #[serde(default)]
    pub denied_countries: BTreeSet<Country>,
    /// The most of the class one investor may hold.
    #[schema(value_type = Option<String>)]
    #[serde(default)]
    pub max_balance: Option<Amount>,
    /// The most of the class that may exist, within the token's own cap.
    #[schema(value_type = Option<String>)]
    #[serde(default)]
    pub max_supply: Option<Amount>,
    /// RFC 3339: until then no investor's own transfer or hold takes units of the class
    /// (`lockup_active`); forced transfers, redemptions and conversions are not stopped.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub locked_until: Option<Timestamp>,
}

impl From<ClassRulesDto> for token::ClassRules {
    fn from(r: ClassRulesDto) -> Self {
        token::ClassRules {
            require_accreditation: r.require_accreditation,
            allowed_countries: r.allowed_countries,
            denied_countries: r.denied_countries,
            max_balance: r.max_balance,
            max_supply: r.max_supply,
            locked_until: r.locked_until,
        }
    }
}

impl From<&token::ClassRules> for ClassRulesDto {
    fn from(r: &token::ClassRules) -> Self {
        ClassRulesDto {
            require_accreditation: r.require_accreditation,
            allowed_countries: r.allowed_countries.clone(),
            denied_countries: r.denied_countries.clone(),
            max_balance: r.max_balance,
            max_supply: r.max_supply,
            locked_until: r.locked_until,
        }
    }
}

/// Define a share class (or change its name and rules).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassRequest {
    /// 1-200 characters, e.g. "Class A ordinary shares".
    pub name: String,
    #[serde(default)]
    pub rules: ClassRulesDto,
}

/// A share class of a token.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClassView {
    /// 1-32 letters, digits, `-` or `_`.
    #[schema(example = "A")]
    pub id: String,
    pub name: String,
    pub rules: ClassRulesDto,
    /// How much of the class exists (staff only: a class of few holders would tell their
    /// stakes).
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supply: Option<Amount>,
}

impl From<&token::ClassState> for ClassView {
    fn from(c: &token::ClassState) -> Self {
        ClassView {
            id: c.class.id.to_string(),
            name: c.class.name.clone(),
            rules: (&c.class.rules).into(),
            supply: Some(c.supply),
        }
    }
}

/// A token's share classes: the default class (what no movement named a class for) and those
/// defined.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClassList {
    pub token_id: String,
    /// How much of the default class exists (staff only).
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_supply: Option<Amount>,
    pub classes: Vec<ClassView>,
}

/// Convert `amount` of a holder's units from one share class to another.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversionRequest {
    pub investor_id: String,
    /// The class the units leave (absent, or `default`: the default class).
    #[serde(default)]
    pub from_class: Option<String>,
    /// The class the units join (absent, or `default`: the default class).
    #[serde(default)]
    pub to_class: Option<String>,
    #[schema(value_type = String, example = "100")]
    pub amount: Amount,
    /// Why (1-1,000 characters, recorded in the event and the ledger).
    pub reason: String,
}
