//! The asset registry: real-world assets, their documents, valuations and approval lifecycle.
//!
//! Commands are decided against the current state into events; events are the only way state
//! changes, so replaying the log rebuilds exactly the same registry.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use time::Date;

use crate::{Amount, Country, Currency, Error, Id, Result, Timestamp, bounded_text, optional_text};

/// Where the asset stands in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Submitted,
    Approved,
    Rejected,
    Tokenized,
    Suspended,
    Retired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Submitted => "submitted",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Tokenized => "tokenized",
            Status::Suspended => "suspended",
            Status::Retired => "retired",
        }
    }
}

/// A move of the lifecycle that a person asks for. `tokenized` is not among them: it only
/// follows from a token class being created for the asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Submit,
    Approve,
    Reject,
    Reopen,
    Suspend,
    Reactivate,
    Retire,
}

impl Action {
    /// The legal moves: `(from, action) -> to`.
    pub fn target(self, from: Status) -> Option<Status> {
        use Status::*;
        match (self, from) {
            (Action::Submit, Draft) => Some(Submitted),
            (Action::Approve, Submitted) => Some(Approved),
            (Action::Reject, Submitted) => Some(Rejected),
            (Action::Reopen, Rejected) => Some(Draft),
            (Action::Suspend, Tokenized) => Some(Suspended),
            (Action::Reactivate, Suspended) => Some(Tokenized),
            // Not from approved: a token class may be on its way (tokenization is asynchronous),
            // and a retired asset must never end up with a live token.
            (Action::Retire, Rejected | Tokenized | Suspended) => Some(Retired),
            _ => None,
        }
    }

    /// Rejecting, suspending and retiring must say why.
    pub fn needs_reason(self) -> bool {
        matches!(self, Action::Reject | Action::Suspend | Action::Retire)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub address: String,
    pub city: String,
    pub postal_code: Option<String>,
    pub country: Country,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub id: Id,
    pub title: String,
    /// For example `title_deed`, `appraisal`, `spv_articles`.
    pub kind: String,
    /// SHA-256 of the file's bytes, lower-case hex.
    pub sha256: String,
    pub size_bytes: u64,
    pub media_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub added_at: Timestamp,
    pub added_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Valuation {
    pub amount: Amount,
    pub currency: Currency,
    pub effective_date: Date,
    pub appraiser: String,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: Timestamp,
    pub recorded_by: String,
}

/// One move of the lifecycle: who, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub from: Status,
    pub to: Status,
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    pub actor: String,
    pub reason: Option<String>,
}

/// The editable description of an asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    /// Open set, for example `real_estate`: lower-case letters, digits and underscores.
    pub kind: String,
    pub location: Location,
    /// The legal owner, usually the special-purpose vehicle.
    pub legal_owner: String,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    pub id: Id,
    /// Registration order as this process applied it (with partitioned logs, replicas may
    /// differ on it; listings go by id).
    pub seq: u64,
    #[serde(flatten)]
    pub profile: Profile,
    pub status: Status,
    pub token_id: Option<Id>,
    pub documents: Vec<Document>,
    pub valuations: Vec<Valuation>,
    pub history: Vec<StatusChange>,
    /// Incremented by every event of this asset; the ETag.
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
}

/// Something that happened to one asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub asset_id: Id,
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    pub actor: String,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    Registered {
        profile: Profile,
    },
    Updated {
        profile: Profile,
    },
    DocumentAdded {
        document: Document,
    },
    ValuationAdded {
        valuation: Valuation,
    },
    StatusChanged {
        from: Status,
        to: Status,
        reason: Option<String>,
        token_id: Option<Id>,
    },
}

impl Event {
    /// The versioned name of this event, the suffix of its CloudEvents type.
    pub fn name(&self) -> &'static str {
        match &self.change {
            Change::Registered { .. } => "registered",
            Change::Updated { .. } => "updated",
            Change::DocumentAdded { .. } => "document_added",
            Change::ValuationAdded { .. } => "valuation_added",
            Change::StatusChanged { to, .. } => to.as_str(),
        }
    }
}

/// Who asks, and when: passed in, never read from a clock here.
#[derive(Debug, Clone)]
pub struct Context {
    pub now: Timestamp,
    pub actor: String,
}

#[derive(Debug, Clone)]
pub struct DocumentForCreate {
    pub title: String,
    pub kind: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub media_type: String,
}

#[derive(Debug, Clone)]
pub struct ValuationForCreate {
    pub amount: Amount,
    pub currency: Currency,
    pub effective_date: Date,
    pub appraiser: String,
}

#[derive(Debug, Clone)]
pub enum Command {
    Register {
        id: Id,
        profile: Profile,
    },
    Update {
        id: Id,
        expected_version: u64,
        profile: Profile,
    },
    AddDocument {
        id: Id,
        document_id: Id,
        document: DocumentForCreate,
    },
    AddValuation {
        id: Id,
        valuation: ValuationForCreate,
    },
    Transition {
        id: Id,
        action: Action,
        reason: Option<String>,
    },
    /// A token class was created for the asset (learnt from the tokens service's event).
    MarkTokenized {
        id: Id,
        token_id: Id,
    },
}

pub const MAX_DOCUMENTS: usize = 200;
pub const MAX_VALUATIONS: usize = 1_000;
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// Validates and normalises a profile.
pub fn profile(
    name: &str,
    kind: &str,
    location: Location,
    legal_owner: &str,
    description: Option<&str>,
) -> Result<Profile> {
    Ok(Profile {
        name: bounded_text("name", name, 200)?,
        kind: slug("kind", kind)?,
        location: Location {
            address: bounded_text("location.address", &location.address, 300)?,
            city: bounded_text("location.city", &location.city, 100)?,
            postal_code: optional_text(
                "location.postal_code",
                location.postal_code.as_deref(),
                20,
            )?,
            country: location.country,
        },
        legal_owner: bounded_text("legal_owner", legal_owner, 200)?,
        description: optional_text("description", description, 4_000)?,
    })
}

fn slug(field: &'static str, value: &str) -> Result<String> {
    let ok = (1..=40).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && value.as_bytes()[0].is_ascii_lowercase();
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{field} must be 1-40 lower-case letters, digits or underscores, starting with a letter"
            ),
        ))
    }
}

fn validate_document(doc: &DocumentForCreate) -> Result<DocumentForCreate> {
    let sha_ok = doc.sha256.len() == 64
        && doc
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !sha_ok {
        return Err(Error::invalid(
            "sha256",
            "sha256 must be 64 lower-case hexadecimal characters",
        ));
    }
    if doc.size_bytes == 0 || doc.size_bytes > MAX_FILE_SIZE {
        return Err(Error::invalid(
            "size_bytes",
            "size_bytes must be between 1 and 2^40",
        ));
    }
    let media_ok = doc.media_type.len() <= 100
        && doc.media_type.split_once('/').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && doc
                    .media_type
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"/.+-_".contains(&c))
        });
    if !media_ok {
        return Err(Error::invalid(
            "media_type",
            "media_type must look like type/subtype, for example application/pdf",
        ));
    }
    Ok(DocumentForCreate {
        title: bounded_text("title", &doc.title, 200)?,
        kind: slug("kind", &doc.kind)?,
        sha256: doc.sha256.clone(),
        size_bytes: doc.size_bytes,
        media_type: doc.media_type.clone(),
    })
}

/// Every asset, in id order (ids grow with time: registration order), the same on every
/// replica whatever order it applied the partitions' logs in.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Registry {
    assets: FxHashMap<Id, Asset>,
    order: Vec<Id>,
}

/// A listing filter; every present criterion must match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub status: Option<Status>,
    pub kind: Option<String>,
    /// Case-insensitive substring of the name, description, city or legal owner.
    pub text: Option<String>,
}

impl Filter {
    fn matches(&self, asset: &Asset) -> bool {
        self.status.is_none_or(|s| asset.status == s)
            && self.kind.as_deref().is_none_or(|k| asset.profile.kind == k)
            && self.text.as_deref().is_none_or(|t| {
                let t = t.to_lowercase();
                let p = &asset.profile;
                [
                    Some(p.name.as_str()),
                    p.description.as_deref(),
                    Some(p.location.city.as_str()),
                    Some(p.legal_owner.as_str()),
                ]
                .into_iter()
                .flatten()
                .any(|field| field.to_lowercase().contains(&t))
            })
    }
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<&Asset> {
        self.assets.get(id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Up to `limit` assets from the cursor `after` (a place in the listing), matching
    /// `filter`; the second value is the cursor of the next page, if there is one.
    pub fn list(&self, filter: &Filter, after: u64, limit: usize) -> (Vec<&Asset>, Option<u64>) {
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(self.order.len());
        let mut page = Vec::with_capacity(limit.min(100));
        for (at, id) in self.order.iter().enumerate().skip(start) {
            let asset = &self.assets[id];
            if filter.matches(asset) {
                if page.len() == limit {
                    return (page, Some(at as u64));
                }
                page.push(asset);
            }
        }
        (page, None)
    }

    fn existing(&self, id: &str) -> Result<&Asset> {
        self.assets.get(id).ok_or_else(|| {
            Error::not_found("asset_not_found", format!("asset {id} does not exist"))
        })
    }

    /// Decides what `command` changes, without changing anything.
    pub fn decide(&self, command: &Command, ctx: &Context) -> Result<Vec<Event>> {
        let event = |asset_id: &Id, change| Event {
            asset_id: asset_id.clone(),
            at: ctx.now,
            actor: ctx.actor.clone(),
            change,
        };
        let change = match command {
            Command::Register { id, profile } => {
                if self.assets.contains_key(id) {
                    return Err(Error::conflict(
                        "asset_exists",
                        format!("asset {id} already exists"),
                    ));
                }
                return Ok(vec![event(
                    id,
                    Change::Registered {
                        profile: profile.clone(),
                    },
                )]);
            }
            Command::Update {
                id,
                expected_version,
                profile,
            } => {
                let asset = self.existing(id)?;
                if asset.version != *expected_version {
                    return Err(stale(asset));
                }
                only_in_draft(asset, "edited")?;
                Change::Updated {
                    profile: profile.clone(),
                }
            }
            Command::AddDocument {
                id,
                document_id,
                document,
            } => {
                let asset = self.existing(id)?;
                only_in_draft(asset, "given documents")?;
                if asset.documents.len() >= MAX_DOCUMENTS {
                    return Err(Error::conflict(
                        "too_many_documents",
                        format!("an asset holds at most {MAX_DOCUMENTS} documents"),
                    ));
                }
                let d = validate_document(document)?;
                Change::DocumentAdded {
                    document: Document {
                        id: document_id.clone(),
                        title: d.title,
                        kind: d.kind,
                        sha256: d.sha256,
                        size_bytes: d.size_bytes,
                        media_type: d.media_type,
                        added_at: ctx.now,
                        added_by: ctx.actor.clone(),
                    },
                }
            }
            Command::AddValuation { id, valuation } => {
                let asset = self.existing(id)?;
                if asset.status == Status::Retired {
                    return Err(Error::conflict(
                        "asset_retired",
                        "a retired asset takes no valuations",
                    ));
                }
                if asset.valuations.len() >= MAX_VALUATIONS {
                    return Err(Error::conflict(
                        "too_many_valuations",
                        format!("an asset holds at most {MAX_VALUATIONS} valuations"),
                    ));
                }
                if valuation.amount.is_zero() {
                    return Err(Error::invalid("amount", "amount must be greater than zero"));
                }
                if valuation.effective_date > ctx.now.date() {
                    return Err(Error::invalid(
                        "effective_date",
                        "effective_date must not be in the future",
                    ));
                }
                Change::ValuationAdded {
                    valuation: Valuation {
                        amount: valuation.amount,
                        currency: valuation.currency,
                        effective_date: valuation.effective_date,
                        appraiser: bounded_text("appraiser", &valuation.appraiser, 200)?,
                        recorded_at: ctx.now,
                        recorded_by: ctx.actor.clone(),
                    },
                }
            }
            Command::Transition { id, action, reason } => {
                let asset = self.existing(id)?;
                let to = action.target(asset.status).ok_or_else(|| {
                    let mut message = format!(
                        "an asset that is {} cannot be moved by {action:?}",
                        asset.status.as_str()
                    );
                    if asset.status == Status::Approved
                        && matches!(action, Action::Suspend | Action::Retire)
                    {
                        // Tokenization is asynchronous: the token class may be on its way.
                        message.push_str(
                            ": it becomes tokenized once its token class is created; if a token class was just created, it is still being recorded here, so retry in a moment",
                        );
                    }
                    Error::conflict("illegal_transition", message)
                })?;
                let reason = optional_text("reason", reason.as_deref(), 1_000)?;
                if action.needs_reason() && reason.is_none() {
                    return Err(Error::invalid("reason", "reason is required for this move"));
                }
                Change::StatusChanged {
                    from: asset.status,
                    to,
                    reason,
                    token_id: None,
                }
            }
            Command::MarkTokenized { id, token_id } => {
                let asset = self.existing(id)?;
                if asset.token_id.as_ref() == Some(token_id) {
                    // The same token.created delivered again: already recorded, nothing to do.
                    return Ok(Vec::new());
                }
                if asset.status != Status::Approved {
                    return Err(Error::conflict(
                        "illegal_transition",
                        format!(
                            "an asset that is {} cannot be tokenized",
                            asset.status.as_str()
                        ),
                    ));
                }
                Change::StatusChanged {
                    from: asset.status,
                    to: Status::Tokenized,
                    reason: Some(format!("token class {token_id} created")),
                    token_id: Some(token_id.clone()),
                }
            }
        };
        Ok(vec![event(command_id(command), change)])
    }

    /// Applies an event that was decided earlier; replaying the log calls only this.
    pub fn apply(&mut self, event: &Event) {
        if let Change::Registered { profile } = &event.change {
            let seq = self.order.len() as u64 + 1;
            let at = self
                .order
                .binary_search(&event.asset_id)
                .unwrap_or_else(|at| at);
            self.order.insert(at, event.asset_id.clone());
            self.assets.insert(
                event.asset_id.clone(),
                Asset {
                    id: event.asset_id.clone(),
                    seq,
                    profile: profile.clone(),
                    status: Status::Draft,
                    token_id: None,
                    documents: Vec::new(),
                    valuations: Vec::new(),
                    history: Vec::new(),
                    version: 1,
                    created_at: event.at,
                    updated_at: event.at,
                },
            );
            return;
        }
        let Some(asset) = self.assets.get_mut(&event.asset_id) else {
            return;
        };
        match &event.change {
            Change::Registered { .. } => {}
            Change::Updated { profile } => asset.profile = profile.clone(),
            Change::DocumentAdded { document } => asset.documents.push(document.clone()),
            Change::ValuationAdded { valuation } => asset.valuations.push(valuation.clone()),
            Change::StatusChanged {
                from,
                to,
                reason,
                token_id,
            } => {
                asset.status = *to;
                if token_id.is_some() {
                    asset.token_id = token_id.clone();
                }
                asset.history.push(StatusChange {
                    from: *from,
                    to: *to,
                    at: event.at,
                    actor: event.actor.clone(),
                    reason: reason.clone(),
                });
            }
        }
        asset.version += 1;
        asset.updated_at = event.at;
    }
}

impl Command {
    /// The asset the command is about: the key of its partition.
    pub fn asset_id(&self) -> &Id {
        command_id(self)
    }
}

fn command_id(command: &Command) -> &Id {
    match command {
        Command::Register { id, .. }
        | Command::Update { id, .. }
        | Command::AddDocument { id, .. }
        | Command::AddValuation { id, .. }
        | Command::Transition { id, .. }
        | Command::MarkTokenized { id, .. } => id,
    }
}

fn stale(asset: &Asset) -> Error {
    Error::new(
        crate::ErrorKind::Stale,
        "version_mismatch",
        format!(
            "asset {} is at version {}; fetch it again before changing it",
            asset.id, asset.version
        ),
    )
}

fn only_in_draft(asset: &Asset, what: &str) -> Result<()> {
    if asset.status == Status::Draft {
        Ok(())
    } else {
        Err(Error::conflict(
            "asset_not_draft",
            format!(
                "only a draft asset can be {what}; this one is {}",
                asset.status.as_str()
            ),
        ))
    }
}

#[cfg(test)]
mod tests;
