//! Who is calling, and what they may do.
//!
//! Authentication: OAuth 2.0 bearer tokens (JWT), checked for signature, issuer, audience, expiry
//! and not-before. In production the keys come from the identity provider's JWKS endpoint
//! (Microsoft Entra ID on Azure), cached and refetched when a token names a key the cache does
//! not hold (rotation). For local runs and tests a development signer shares one HS256 secret
//! with the `libertum token` command.
//!
//! Authorization: the matrix of [`Role`] x [`Operation`] in [`Operation::roles`] (written out in
//! `docs/security.md`, which a test keeps equal to it), and, for an investor, only their own
//! holdings ([`Principal::allow_own`]).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{FromRequestParts, Request},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, JwkSet, KeyOperations, PublicKeyUse},
};
use serde::{Deserialize, Serialize};

use crate::{ApiError, config::Settings};

/// The development signer's secret in [`Settings::for_test`] and the test kit: never for a
/// deployment, which sets `LIBERTUM_AUTH_JWKS_URL`.
pub const TEST_SECRET: &str = "libertum-test-signing-secret-0123456789abcdef";

/// What a principal is, as the `roles` claim names it (Entra ID app roles arrive there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    PlatformAdmin,
    /// Registers assets, documents and valuations, and submits them.
    AssetManager,
    /// Approves assets, verifies investors, sets rules, freezes and forces transfers.
    ComplianceOfficer,
    /// Creates token classes, issues, redeems, pauses and distributes.
    TokenAgent,
    /// Sees and moves only their own holdings (the `investor_id` claim).
    Investor,
    /// Reads the ledger and the registers, verifies the chain, writes nothing.
    Auditor,
    /// Confirms or rejects the cash leg of settlements against payment, and reads holds.
    PaymentAgent,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::PlatformAdmin,
        Role::AssetManager,
        Role::ComplianceOfficer,
        Role::TokenAgent,
        Role::Investor,
        Role::Auditor,
        Role::PaymentAgent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform_admin",
            Role::AssetManager => "asset_manager",
            Role::ComplianceOfficer => "compliance_officer",
            Role::TokenAgent => "token_agent",
            Role::Investor => "investor",
            Role::Auditor => "auditor",
            Role::PaymentAgent => "payment_agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Every operation of the API, each allowed to the roles [`Operation::roles`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    AssetRegister,
    AssetRead,
    AssetUpdate,
    AssetDocumentAdd,
    AssetValuationAdd,
    /// `submit` and `reopen`.
    AssetSubmit,
    /// `approve`, `reject`, `suspend`, `reactivate`, `retire`.
    AssetReview,
    TokenCreate,
    TokenRead,
    TokenRulesUpdate,
    InvestorRegister,
    InvestorList,
    /// An investor may read their own record.
    InvestorRead,
    InvestorUpdate,
    Issue,
    /// An investor may move only their own holdings.
    Transfer,
    /// An investor may check only a transfer of their own holdings.
    TransferCheck,
    Redeem,
    ForcedTransfer,
    Freeze,
    Pause,
    Batch,
    HoldersList,
    /// An investor may read only their own holding.
    HoldingRead,
    Distribute,
    DistributionsList,
    /// An investor may place holds only on their own holdings.
    HoldPlace,
    /// Post or void a hold.
    HoldSettle,
    /// An investor may read only the holds they send or receive.
    HoldRead,
    /// Confirm or reject a settlement's cash leg.
    PaymentConfirm,
    /// Approve a transfer in advance, revoke an approval, list those waiting.
    TransferApprove,
    /// List and read a token's movements.
    MovementRead,
    /// Reverse a movement.
    MovementReverse,
    /// Define a share class of a token, or change its rules.
    ClassDefine,
    /// Convert a holder's units from one share class to another.
    Convert,
    LedgerRead,
    /// Webhook subscriptions and the event stream: staff see every event, an investor only
    /// those that touch their own accounts or record.
    EventsSubscribe,
    /// An investor may read only their own account's balance.
    BalanceRead,
    LedgerVerify,
}

impl Operation {
    pub const ALL: [Operation; 39] = [
        Operation::AssetRegister,
        Operation::AssetRead,
        Operation::AssetUpdate,
        Operation::AssetDocumentAdd,
        Operation::AssetValuationAdd,
        Operation::AssetSubmit,
        Operation::AssetReview,
        Operation::TokenCreate,
        Operation::TokenRead,
        Operation::TokenRulesUpdate,
        Operation::InvestorRegister,
        Operation::InvestorList,
        Operation::InvestorRead,
        Operation::InvestorUpdate,
        Operation::Issue,
        Operation::Transfer,
        Operation::TransferCheck,
        Operation::Redeem,
        Operation::ForcedTransfer,
        Operation::Freeze,
        Operation::Pause,
        Operation::Batch,
        Operation::HoldersList,
        Operation::HoldingRead,
        Operation::Distribute,
        Operation::DistributionsList,
        Operation::HoldPlace,
        Operation::HoldSettle,
        Operation::HoldRead,
        Operation::PaymentConfirm,
        Operation::TransferApprove,
        Operation::MovementRead,
        Operation::MovementReverse,
        Operation::ClassDefine,
        Operation::Convert,
        Operation::LedgerRead,
        Operation::EventsSubscribe,
        Operation::BalanceRead,
        Operation::LedgerVerify,
    ];

    /// The name in errors, logs and `docs/security.md`.
    pub fn name(self) -> &'static str {
        use Operation::*;
        match self {
            AssetRegister => "asset.register",
            AssetRead => "asset.read",
            AssetUpdate => "asset.update",
            AssetDocumentAdd => "asset.document.add",
            AssetValuationAdd => "asset.valuation.add",
            AssetSubmit => "asset.submit",
            AssetReview => "asset.review",
            TokenCreate => "token.create",
            TokenRead => "token.read",
            TokenRulesUpdate => "token.rules.update",
            InvestorRegister => "investor.register",
            InvestorList => "investor.list",
            InvestorRead => "investor.read",
            InvestorUpdate => "investor.update",
            Issue => "token.issue",
            Transfer => "token.transfer",
            TransferCheck => "token.transfer.check",
            Redeem => "token.redeem",
            ForcedTransfer => "token.forced_transfer",
            Freeze => "token.freeze",
            Pause => "token.pause",
            Batch => "token.batch",
            HoldersList => "token.holders.list",
            HoldingRead => "token.holding.read",
            Distribute => "token.distribute",
            DistributionsList => "token.distributions.list",
            HoldPlace => "token.hold.place",
            HoldSettle => "token.hold.settle",
            HoldRead => "token.hold.read",
            PaymentConfirm => "token.payment.confirm",
            TransferApprove => "token.transfer.approve",
            MovementRead => "token.movement.read",
            MovementReverse => "token.movement.reverse",
            ClassDefine => "token.class.define",
            Convert => "token.convert",
            LedgerRead => "ledger.read",
            EventsSubscribe => "events.subscribe",
            BalanceRead => "ledger.balance.read",
            LedgerVerify => "ledger.verify",
        }
    }

    /// Operations on one investor's holdings or record: an investor may perform them only on
    /// their own ([`Principal::allow_own`]).
    pub fn owned(self) -> bool {
        use Operation::*;
        matches!(
            self,
            InvestorRead
                | Transfer
                | TransferCheck
                | HoldingRead
                | BalanceRead
                | HoldPlace
                | HoldRead
        )
    }

    /// The matrix: who may perform this operation. [`Role::Investor`] here means "on their own
    /// holdings" wherever the operation concerns one investor.
    pub fn roles(self) -> &'static [Role] {
        use Operation::*;
        use Role::*;
        const STAFF_READERS: &[Role] = &[PlatformAdmin, ComplianceOfficer, TokenAgent, Auditor];
        match self {
            AssetRegister | AssetUpdate | AssetDocumentAdd | AssetValuationAdd | AssetSubmit => {
                &[PlatformAdmin, AssetManager]
            }
            AssetRead | TokenRead => &Role::ALL,
            AssetReview | TokenRulesUpdate | InvestorRegister | InvestorUpdate | ForcedTransfer
            | Freeze | MovementReverse | ClassDefine => &[PlatformAdmin, ComplianceOfficer],
            TokenCreate | Issue | Redeem | Pause | Batch | Distribute | TransferApprove
            | Convert => &[PlatformAdmin, TokenAgent],
            InvestorList | HoldersList | DistributionsList | MovementRead | LedgerRead => {
                STAFF_READERS
            }
            InvestorRead | HoldingRead | BalanceRead | EventsSubscribe => &[
                PlatformAdmin,
                ComplianceOfficer,
                TokenAgent,
                Auditor,
                Investor,
            ],
            Transfer => &[PlatformAdmin, Investor],
            HoldPlace => &[PlatformAdmin, TokenAgent, Investor],
            HoldSettle => &[PlatformAdmin, TokenAgent],
            HoldRead => &[
                PlatformAdmin,
                ComplianceOfficer,
                TokenAgent,
                Auditor,
                PaymentAgent,
                Investor,
            ],
            PaymentConfirm => &[PlatformAdmin, PaymentAgent],
            TransferCheck => &[PlatformAdmin, ComplianceOfficer, TokenAgent, Investor],
            LedgerVerify => &[PlatformAdmin, Auditor],
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: recorded as the actor of every event the request causes.
    pub subject: String,
    pub roles: Vec<Role>,
    /// The investor this principal is (the `investor_id` claim), for the investor role.
    pub investor: Option<String>,
}

impl Principal {
    /// Whether the principal acts as staff: any role but investor.
    pub fn is_staff(&self) -> bool {
        self.roles.iter().any(|r| *r != Role::Investor)
    }

    /// Allows `op` to any of the principal's roles the matrix names. On an operation that
    /// concerns one investor ([`Operation::owned`]) the investor role counts only through
    /// [`Principal::allow_own`].
    pub fn allow(&self, op: Operation) -> Result<(), ApiError> {
        if self
            .roles
            .iter()
            .any(|r| op.roles().contains(r) && !(op.owned() && *r == Role::Investor))
        {
            Ok(())
        } else {
            Err(forbidden(op))
        }
    }

    /// Allows `op` on investor `owner`'s holdings: to the staff roles the matrix names, and to
    /// an investor only if `owner` is that investor.
    pub fn allow_own(&self, op: Operation, owner: &str) -> Result<(), ApiError> {
        let allowed = self.roles.iter().any(|r| {
            op.roles().contains(r)
                && (*r != Role::Investor || self.investor.as_deref() == Some(owner))
        });
        if allowed {
            Ok(())
        } else if self.roles.iter().any(|r| op.roles().contains(r)) {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_your_holding",
                format!("{} is allowed on your own holdings only", op.name()),
            ))
        } else {
            Err(forbidden(op))
        }
    }
}

fn forbidden(op: Operation) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("your roles do not allow {}", op.name()),
    )
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| unauthorized(AuthError::Missing))
    }
}

/// Why a request is not authenticated; each is a 401 with its own stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this request needs an Authorization: Bearer token")]
    Missing,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the bearer token was issued for another audience")]
    WrongAudience,
    #[error("the bearer token was issued by an unknown issuer")]
    WrongIssuer,
    /// Bad signature, unknown key, wrong algorithm, malformed: told apart only in logs.
    #[error("the bearer token is not valid")]
    Invalid(String),
    #[error("the identity provider's keys cannot be fetched")]
    KeysUnavailable(String),
    /// A development token of another key: the usual slip of a development setup, told.
    #[error(
        "the bearer token is not signed by this service's development signer: make it with `libertum token` given the same LIBERTUM_DATA_DIR or LIBERTUM_AUTH_DEV_SECRET as the service"
    )]
    OtherDevelopmentKey,
}

impl AuthError {
    fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongAudience => "token_wrong_audience",
            AuthError::WrongIssuer => "token_wrong_issuer",
            AuthError::Invalid(_) | AuthError::OtherDevelopmentKey => "invalid_token",
            AuthError::KeysUnavailable(_) => "unavailable",
        }
    }
}

/// 401 problem+json with `WWW-Authenticate: Bearer` (RFC 6750); 503 if the keys cannot be had.
fn unauthorized(error: AuthError) -> Response {
    if let AuthError::KeysUnavailable(cause) = &error {
        let mut response = ApiError::unavailable(cause).into_response();
        // The keys are asked for again at most this often.
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(JWKS_MIN_REFETCH.as_secs()),
        );
        return response;
    }
    match &error {
        AuthError::Invalid(cause) => tracing::info!(%cause, "bearer token refused"),
        AuthError::OtherDevelopmentKey => {
            tracing::info!(
                cause = "signed with another development key",
                "bearer token refused"
            )
        }
        _ => {}
    }
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, error.code(), error.to_string())
        .at("Authorization")
        .into_response();
    let challenge = match error {
        AuthError::Missing => r#"Bearer realm="libertum""#,
        _ => r#"Bearer realm="libertum", error="invalid_token""#,
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// The longest bearer token looked at, and the longest header segment: anything longer is
/// refused before it is decoded.
const MAX_TOKEN: usize = 8 * 1024;
const MAX_TOKEN_HEADER: usize = 1024;
/// No token is accepted that expires further away than this (the development signer issues at
/// most this much; an identity provider's access tokens live an hour or so).
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The claims the services read; `exp`, `nbf`, `iss` and `aud` are checked by the validation.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Read to bound the lifetime; the signer writes it itself.
    #[serde(default, skip_serializing)]
    exp: Option<u64>,
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    investor_id: Option<String>,
}

/// Checks bearer tokens.
pub struct Authenticator {
    issuer: String,
    audience: String,
    leeway_seconds: u64,
    keys: Keys,
    verified: Verified,
}

/// Tokens verified lately, so that a client's every request does not pay for the signature
/// (an RSA verification in production) and the claims' decoding again. A token is taken from
/// here only while it is valid (until its `exp` plus the leeway) and for at most
/// [`VERIFIED_FOR`] after it was verified, so that a key withdrawn from the JWKS stops
/// admitting its tokens as soon as it would without this. Keyed by the whole token, compared
/// exactly; bounded in count and in each token's size.
#[derive(Default)]
struct Verified(parking_lot::Mutex<HashMap<String, (Principal, u64, Instant)>>);

/// How long a verified token is taken on trust.
pub const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// The most tokens remembered, and the longest one remembered.
const VERIFIED_MAX: usize = 4_096;
const VERIFIED_MAX_BYTES: usize = 2_048;

impl Verified {
    fn get(&self, token: &str, now: u64) -> Option<Principal> {
        let map = self.0.lock();
        let (principal, until, at) = map.get(token)?;
        (now <= *until && at.elapsed() < VERIFIED_FOR).then(|| principal.clone())
    }

    fn put(&self, token: &str, principal: &Principal, until: u64, now: u64) {
        if token.len() > VERIFIED_MAX_BYTES {
            return;
        }
        let mut map = self.0.lock();
        if map.len() >= VERIFIED_MAX {
            map.retain(|_, (_, until, at)| now <= *until && at.elapsed() < VERIFIED_FOR);
            if map.len() >= VERIFIED_MAX {
                map.clear();
            }
        }
        map.insert(token.to_owned(), (principal.clone(), until, Instant::now()));
    }
}

enum Keys {
    /// The development signer's shared secret, HS256 only.
    Development(DecodingKey),
    Jwks(Jwks),
}

impl Authenticator {
    /// Tokens signed by the development signer with `secret`.
    pub fn development(secret: &[u8], issuer: &str, audience: &str) -> Self {
        Authenticator {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway_seconds: 30,
            keys: Keys::Development(DecodingKey::from_secret(secret)),
            verified: Verified::default(),
        }
    }

    /// Tokens signed by a key of the JWKS document at `url` (RS256 for RSA keys as Entra ID
    /// publishes them, EdDSA for Ed25519 keys).
    pub fn jwks(url: &str, issuer: &str, audience: &str) -> Self {
        Authenticator {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway_seconds: 30,
            keys: Keys::Jwks(Jwks {
                url: url.to_owned(),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_default(),
                cache: tokio::sync::RwLock::new(Cached::default()),
                refresh: tokio::sync::Mutex::new(()),
                min_refetch: JWKS_MIN_REFETCH,
            }),
            verified: Verified::default(),
        }
    }

    /// Which signer's tokens are checked: `development` or `jwks`.
    pub fn signer(&self) -> &'static str {
        match self.keys {
            Keys::Development(_) => "development",
            Keys::Jwks(_) => "jwks",
        }
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut v = Validation::new(algorithm);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = self.leeway_seconds;
        v
    }

    /// The principal a bearer token stands for, or why it is refused.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(principal) = self.verified.get(token, now) {
            return Ok(principal);
        }
        // Sizes first: nothing large is decoded before the signature is checked.
        let header_part = token.split('.').next().unwrap_or_default();
        if token.len() > MAX_TOKEN || header_part.len() > MAX_TOKEN_HEADER {
            return Err(AuthError::Invalid(format!(
                "a token of {} bytes (header {}): at most {MAX_TOKEN} (header {MAX_TOKEN_HEADER})",
                token.len(),
                header_part.len()
            )));
        }
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        // RFC 7515 4.1.11: an extension named critical that is not understood (none is here)
        // makes the token invalid.
        if let Some(crit) = &header.crit {
            return Err(AuthError::Invalid(format!(
                "critical header extensions {crit:?} are not understood"
            )));
        }
        let claims = match &self.keys {
            Keys::Development(key) => {
                decode::<Claims>(token, key, &self.validation(Algorithm::HS256))
            }
            Keys::Jwks(jwks) => {
                let kid = header
                    .kid
                    .ok_or_else(|| AuthError::Invalid("the token names no key (kid)".into()))?;
                let (key, algorithm) = jwks.key(&kid).await?;
                decode::<Claims>(token, &key, &self.validation(algorithm))
            }
        }
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature if matches!(self.keys, Keys::Development(_)) => {
                AuthError::OtherDevelopmentKey
            }
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            _ => AuthError::Invalid(e.to_string()),
        })?
        .claims;
        if claims.exp.is_some_and(|exp| {
            exp > now.saturating_add(MAX_LIFETIME.as_secs() + self.leeway_seconds)
        }) {
            return Err(AuthError::Invalid(format!(
                "the token expires more than {} days from now",
                MAX_LIFETIME.as_secs() / 86_400
            )));
        }
        if claims.sub.is_empty() || claims.sub.len() > 200 {
            return Err(AuthError::Invalid("sub must be 1 to 200 characters".into()));
        }
        let principal = Principal {
            subject: claims.sub,
            // Roles this service does not know are ignored: they grant nothing here.
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            investor: claims.investor_id,
        };
        // `exp` is required by the validation; without it nothing is remembered.
        if let Some(exp) = claims.exp {
            self.verified.put(
                token,
                &principal,
                exp.saturating_add(self.leeway_seconds),
                now,
            );
        }
        Ok(principal)
    }
}

/// The identity provider's keys, by key id.
struct Jwks {
    url: String,
    http: reqwest::Client,
    cache: tokio::sync::RwLock<Cached>,
    /// One refetch at a time.
    refresh: tokio::sync::Mutex<()>,
    min_refetch: Duration,
}

#[derive(Default)]
struct Cached {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    /// The last successful fetch.
    fetched: Option<Instant>,
    /// The last attempt, successful or not.
    attempted: Option<Instant>,
}

/// Keys are refetched when older than this, so removed keys stop being trusted (once the
/// provider answers: while it does not, the last keys it published stand).
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The provider is asked at most this often, so forged key ids or an outage cannot flood it.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);

impl Jwks {
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        {
            let cache = self.cache.read().await;
            if cache.fetched.is_some_and(|at| at.elapsed() < JWKS_MAX_AGE)
                && let Some(key) = cache.keys.get(kid)
            {
                return Ok(key.clone());
            }
        }
        let _one = self.refresh.lock().await;
        let mut cache = self.cache.write().await;
        // Another request may have refetched while this one waited.
        if cache.fetched.is_some_and(|at| at.elapsed() < JWKS_MAX_AGE)
            && let Some(key) = cache.keys.get(kid)
        {
            return Ok(key.clone());
        }
        // Attempts, failed ones too, are spaced: forged key ids or a provider outage must not
        // turn every request into a call to the provider.
        if cache
            .attempted
            .is_some_and(|at| at.elapsed() < self.min_refetch)
        {
            return match cache.keys.get(kid) {
                Some(key) => Ok(key.clone()),
                None if cache.fetched.is_none() => Err(AuthError::KeysUnavailable(format!(
                    "JWKS at {} not fetched yet",
                    self.url
                ))),
                None => Err(AuthError::Invalid(format!("no key {kid} in the JWKS"))),
            };
        }
        cache.attempted = Some(Instant::now());
        // Readers with a cached key go on while this one asks the provider.
        drop(cache);
        let fetched = self.fetch().await;
        let mut cache = self.cache.write().await;
        match fetched {
            Ok(keys) => {
                cache.keys = keys;
                cache.fetched = Some(Instant::now());
                cache
                    .keys
                    .get(kid)
                    .cloned()
                    .ok_or_else(|| AuthError::Invalid(format!("no key {kid} in the JWKS")))
            }
            // The provider is unreachable: the keys it last published still stand.
            Err(error) => cache.keys.get(kid).cloned().ok_or(error),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, (DecodingKey, Algorithm)>, AuthError> {
        let unavailable = |e: String| {
            tracing::error!(url = %self.url, error = %e, "JWKS fetch failed");
            AuthError::KeysUnavailable(format!("JWKS at {}: {e}", self.url))
        };
        let set: JwkSet = self
            .http
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable(e.to_string()))?
            .json()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            // Only keys published for signatures verify tokens (RFC 7517 4.2, 4.3).
            let for_signatures = !matches!(
                jwk.common.public_key_use,
                Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
            ) && jwk
                .common
                .key_operations
                .as_ref()
                .is_none_or(|ops| ops.contains(&KeyOperations::Verify));
            if !for_signatures {
                continue;
            }
            // The algorithm follows from the key type, never from the token's header.
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid.clone(), (key, algorithm));
            }
        }
        tracing::info!(url = %self.url, keys = keys.len(), "JWKS fetched");
        Ok(keys)
    }
}

/// The bearer token of `Authorization: Bearer ...`, if there is a non-empty one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
}

/// Authenticates a request: its [`Principal`] goes into its extensions, or the refusal is
/// returned.
pub async fn authenticate(auth: &Authenticator, request: &mut Request) -> Result<(), Response> {
    let Some(token) = bearer(request.headers()) else {
        return Err(unauthorized(AuthError::Missing));
    };
    let principal = auth.authenticate(token).await.map_err(unauthorized)?;
    request.extensions_mut().insert(principal);
    Ok(())
}

/// Signs development tokens with the secret the services check in development mode.
pub struct DevSigner {
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl DevSigner {
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> Self {
        DevSigner {
            key: EncodingKey::from_secret(secret),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// A token for `subject` with `roles` (and `investor`, for the investor role), valid from
    /// now for `ttl`.
    pub fn token(
        &self,
        subject: &str,
        roles: &[Role],
        investor: Option<&str>,
        ttl: Duration,
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.token_at(subject, roles, investor, now, now + ttl.as_secs())
    }

    /// A token valid from `nbf` to `exp` (Unix seconds), for tests of those checks.
    pub fn token_at(
        &self,
        subject: &str,
        roles: &[Role],
        investor: Option<&str>,
        nbf: u64,
        exp: u64,
    ) -> String {
        #[derive(Serialize)]
        struct Full<'a> {
            #[serde(flatten)]
            claims: Claims,
            iss: &'a str,
            aud: &'a str,
            iat: u64,
            nbf: u64,
            exp: u64,
        }
        let full = Full {
            claims: Claims {
                exp: None,
                sub: subject.to_owned(),
                roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
                investor_id: investor.map(str::to_owned),
            },
            iss: &self.issuer,
            aud: &self.audience,
            iat: nbf,
            nbf,
            exp,
        };
        // Signing claims that serialize cannot fail with an HMAC key.
        encode(&Header::new(Algorithm::HS256), &full, &self.key).unwrap_or_default()
    }
}

/// How the services check tokens (`LIBERTUM_AUTH*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// `Some(url)`: keys from the identity provider's JWKS; `None`: the development signer.
    pub jwks_url: Option<String>,
    pub issuer: String,
    pub audience: String,
    /// The development signer's secret; unset, it is kept in `{data_dir}/development-signing.key`.
    pub dev_secret: Option<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwks_url: None,
            issuer: DEV_ISSUER.to_owned(),
            audience: DEV_AUDIENCE.to_owned(),
            dev_secret: None,
        }
    }
}

pub const DEV_ISSUER: &str = "libertum-development";
pub const DEV_AUDIENCE: &str = "libertum";

/// The development secret: `LIBERTUM_AUTH_DEV_SECRET`, or the one kept in the data directory,
/// made on first use (readable by its owner only).
fn dev_secret(settings: &Settings, create: bool) -> std::io::Result<Vec<u8>> {
    if let Some(secret) = &settings.auth.dev_secret {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = dev_key_path(settings);
    let usable = |secret: Vec<u8>| {
        if secret.len() >= 32 {
            Ok(secret)
        } else {
            Err(std::io::Error::other(format!(
                "{} holds fewer than 32 bytes: delete it to have a new one made",
                path.display()
            )))
        }
    };
    match std::fs::read(&path) {
        Ok(secret) => return usable(secret),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "there is no development signing key at {}: the product makes it when it first starts; run this from the directory the product runs in, or set LIBERTUM_DATA_DIR to its data directory (or LIBERTUM_AUTH_DEV_SECRET to the secret the services were given)",
                    path.display()
                ),
            ));
        }
        Err(e) => return Err(e),
    }
    libertum_store::private_dir(&settings.data_dir)?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    // Written whole under a private name, then linked into place: a process that races this
    // one sees either no file or the whole secret, never a part of it.
    let staged = settings.data_dir.join(format!(
        "development-signing.key.{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&staged)?;
    std::io::Write::write_all(&mut file, secret.as_bytes())?;
    file.sync_all()?;
    drop(file);
    let linked = std::fs::hard_link(&staged, &path);
    let _ = std::fs::remove_file(&staged);
    match linked {
        Ok(()) => Ok(secret.into_bytes()),
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => usable(std::fs::read(&path)?),
        Err(e) => Err(e),
    }
}

/// The authenticator the settings ask for.
pub fn authenticator(settings: &Settings) -> std::io::Result<Arc<Authenticator>> {
    let a = &settings.auth;
    Ok(Arc::new(match &a.jwks_url {
        Some(url) => Authenticator::jwks(url, &a.issuer, &a.audience),
        None => {
            tracing::warn!(
                "authentication uses the development signer (LIBERTUM_AUTH_JWKS_URL unset): not for a deployment"
            );
            Authenticator::development(&dev_secret(settings, true)?, &a.issuer, &a.audience)
        }
    }))
}

/// The development signer matching [`authenticator`] for the same settings. It never makes a
/// key: a signer whose key no service has would sign tokens every service refuses.
pub fn dev_signer(settings: &Settings) -> std::io::Result<DevSigner> {
    let a = &settings.auth;
    Ok(DevSigner::new(
        &dev_secret(settings, false)?,
        &a.issuer,
        &a.audience,
    ))
}

/// Where [`dev_signer`] takes its secret from, for a person reading it.
pub fn dev_signer_source(settings: &Settings) -> String {
    match settings.auth.dev_secret {
        Some(_) => "LIBERTUM_AUTH_DEV_SECRET".to_owned(),
        None => dev_key_path(settings).display().to_string(),
    }
}

/// Where the development secret is kept when `LIBERTUM_AUTH_DEV_SECRET` is unset.
fn dev_key_path(settings: &Settings) -> std::path::PathBuf {
    settings.data_dir.join("development-signing.key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk;

    const SECRET: &[u8] = b"a-secret-of-at-least-thirty-two-bytes";

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn dev() -> (Authenticator, DevSigner) {
        (
            Authenticator::development(SECRET, "iss-test", "aud-test"),
            DevSigner::new(SECRET, "iss-test", "aud-test"),
        )
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    #[tokio::test]
    async fn development_tokens_are_checked_for_signature_issuer_audience_expiry_and_not_before() {
        let (auth, signer) = dev();
        let good = signer.token("alice", &[Role::TokenAgent], None, Duration::from_secs(60));
        let p = auth.authenticate(&good).await.expect("a good token");
        assert_eq!(p.subject, "alice");
        assert_eq!(p.roles, vec![Role::TokenAgent]);

        let t = now();
        let expired = signer.token_at("alice", &[Role::TokenAgent], None, t - 600, t - 300);
        assert_eq!(auth.authenticate(&expired).await, Err(AuthError::Expired));
        let early = signer.token_at("alice", &[Role::TokenAgent], None, t + 300, t + 600);
        assert_eq!(auth.authenticate(&early).await, Err(AuthError::NotYetValid));

        let other_aud = DevSigner::new(SECRET, "iss-test", "someone-else").token(
            "alice",
            &[Role::TokenAgent],
            None,
            Duration::from_secs(60),
        );
        assert_eq!(
            auth.authenticate(&other_aud).await,
            Err(AuthError::WrongAudience)
        );
        let other_iss = DevSigner::new(SECRET, "evil", "aud-test").token(
            "alice",
            &[Role::TokenAgent],
            None,
            Duration::from_secs(60),
        );
        assert_eq!(
            auth.authenticate(&other_iss).await,
            Err(AuthError::WrongIssuer)
        );
        let forged = DevSigner::new(
            b"another-secret-of-thirty-two-bytes!",
            "iss-test",
            "aud-test",
        )
        .token(
            "alice",
            &[Role::PlatformAdmin],
            None,
            Duration::from_secs(60),
        );
        assert_eq!(
            auth.authenticate(&forged).await,
            Err(AuthError::OtherDevelopmentKey),
            "another key's token is refused, and says so"
        );
        // The signature covers the claims: a role added afterwards breaks it.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = b64(
            br#"{"sub":"alice","roles":["platform_admin"],"iss":"iss-test","aud":"aud-test","nbf":0,"exp":99999999999}"#,
        );
        assert!(matches!(
            auth.authenticate(&parts.join(".")).await,
            Err(AuthError::Invalid(_) | AuthError::OtherDevelopmentKey)
        ));
        // An unsigned token (alg none) is never accepted.
        let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(matches!(
            auth.authenticate(&none).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.authenticate("not-a-jwt").await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn a_verified_token_is_taken_on_trust_only_while_it_is_valid() {
        let (mut auth, signer) = dev();
        auth.leeway_seconds = 0;
        let token = signer.token_at("alice", &[Role::Auditor], None, now() - 5, now() + 1);
        let first = auth.authenticate(&token).await.expect("valid");
        assert_eq!(auth.verified.0.lock().len(), 1, "remembered");
        assert_eq!(auth.authenticate(&token).await.expect("remembered"), first);
        // A token that differs by one character is another token, checked on its own.
        let mut forged = token.clone();
        let last = forged.pop().expect("a signature");
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(
            auth.authenticate(&forged).await.is_err(),
            "not taken on trust"
        );
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert!(
            matches!(auth.authenticate(&token).await, Err(AuthError::Expired)),
            "an expired token is refused even though it was verified before"
        );
        // The bound holds whatever is sent.
        for i in 0..(VERIFIED_MAX + 10) {
            let token = signer.token_at(&format!("user-{i}"), &[], None, now() - 5, now() + 60);
            auth.authenticate(&token).await.expect("valid");
        }
        assert!(auth.verified.0.lock().len() <= VERIFIED_MAX);
    }

    #[tokio::test]
    async fn unknown_roles_grant_nothing_and_the_investor_claim_is_kept() {
        let (auth, _) = dev();
        #[derive(Serialize)]
        struct Raw<'a> {
            sub: &'a str,
            roles: Vec<&'a str>,
            investor_id: &'a str,
            iss: &'a str,
            aud: &'a str,
            nbf: u64,
            exp: u64,
        }
        let t = now();
        let raw = Raw {
            sub: "bob",
            roles: vec!["investor", "superuser", "Platform_Admin"],
            investor_id: "inv_1",
            iss: "iss-test",
            aud: "aud-test",
            nbf: t,
            exp: t + 60,
        };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &raw,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("signed");
        let p = auth.authenticate(&token).await.expect("valid");
        assert_eq!(p.roles, vec![Role::Investor]);
        assert_eq!(p.investor.as_deref(), Some("inv_1"));
    }

    #[test]
    fn investors_act_only_on_their_own_holdings() {
        let investor = Principal {
            subject: "bob".into(),
            roles: vec![Role::Investor],
            investor: Some("inv_bob".into()),
        };
        assert!(investor.allow_own(Operation::Transfer, "inv_bob").is_ok());
        assert_eq!(
            investor
                .allow_own(Operation::Transfer, "inv_alice")
                .expect_err("not theirs")
                .status,
            StatusCode::FORBIDDEN
        );
        // The plain check never lets the investor role through on an owned operation.
        assert!(investor.allow(Operation::Transfer).is_err());
        assert!(investor.allow(Operation::TokenRead).is_ok());
        assert!(investor.allow(Operation::Issue).is_err());
        let agent = Principal {
            subject: "tina".into(),
            roles: vec![Role::TokenAgent],
            investor: None,
        };
        assert!(agent.allow_own(Operation::HoldingRead, "inv_alice").is_ok());
        assert!(agent.allow_own(Operation::Transfer, "inv_alice").is_err());
    }

    #[test]
    fn the_matrix_in_the_docs_is_the_matrix_in_the_code() {
        let doc = include_str!("../../../docs/security.md");
        let mut lines = doc
            .lines()
            .skip_while(|l| !l.starts_with("| operation | platform_admin"));
        let header = lines.next().expect("the matrix table in docs/security.md");
        let columns: Vec<Role> = header
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty() && *c != "operation")
            .map(|c| Role::parse(c).unwrap_or_else(|| panic!("unknown role column {c}")))
            .collect();
        assert_eq!(columns.len(), Role::ALL.len(), "one column per role");
        let mut seen = Vec::new();
        for line in lines.skip(1).take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`');
            let op = Operation::ALL
                .into_iter()
                .find(|o| o.name() == name)
                .unwrap_or_else(|| panic!("docs/security.md names an unknown operation {name}"));
            for (role, cell) in columns.iter().zip(&cells[2..]) {
                let documented = !cell.is_empty() && *cell != "-";
                assert_eq!(
                    documented,
                    op.roles().contains(role),
                    "{name} x {}: the docs say {cell:?}",
                    role.as_str()
                );
                if documented && *role == Role::Investor {
                    assert_eq!(*cell == "own", op.owned(), "{name}: investor cell {cell:?}");
                }
            }
            seen.push(op);
        }
        for op in Operation::ALL {
            assert!(
                seen.contains(&op),
                "{} is missing from docs/security.md",
                op.name()
            );
        }
    }

    /// An Ed25519 key made for the test, with its public JWK under `kid`.
    fn ed25519(kid: &str) -> (EncodingKey, Jwk) {
        // PKCS#8 v1 of an Ed25519 private key: this prefix, then the 32-byte seed.
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let seed = [
            *uuid::Uuid::new_v4().as_bytes(),
            *uuid::Uuid::new_v4().as_bytes(),
        ]
        .concat();
        let der = [&PREFIX[..], &seed].concat();
        let key = EncodingKey::from_ed_der(&der);
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA).expect("a public JWK");
        jwk.common.key_id = Some(kid.to_owned());
        (key, jwk)
    }

    /// Serves `app` (an identity provider's `/keys`) on a free port; its JWKS URL.
    async fn serve_keys(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/keys", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn signed(key: &EncodingKey, kid: &str, sub: &str) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        let t = now();
        let claims = serde_json::json!({
            "sub": sub, "roles": ["auditor"], "iss": "https://idp.test/", "aud": "api://libertum",
            "nbf": t, "exp": t + 60,
        });
        encode(&header, &claims, key).expect("signed")
    }

    #[tokio::test]
    async fn jwks_keys_are_fetched_cached_and_refetched_when_the_provider_rotates_them() {
        let (old_key, old_jwk) = ed25519("2026-old");
        let (new_key, new_jwk) = ed25519("2026-new");
        let published = Arc::new(std::sync::Mutex::new(JwkSet {
            keys: vec![old_jwk.clone()],
        }));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = {
            let (published, fetches) = (published.clone(), fetches.clone());
            axum::Router::new().route(
                "/keys",
                axum::routing::get(move || {
                    fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let set =
                        serde_json::to_value(&*published.lock().expect("lock")).expect("json");
                    async move { axum::Json(set) }
                }),
            )
        };
        let url = serve_keys(app).await;

        let mut auth = Authenticator::jwks(&url, "https://idp.test/", "api://libertum");
        if let Keys::Jwks(jwks) = &mut auth.keys {
            jwks.min_refetch = Duration::ZERO;
        }
        let p = auth
            .authenticate(&signed(&old_key, "2026-old", "carol"))
            .await
            .expect("signed by a published key");
        assert_eq!(
            (p.subject.as_str(), p.roles.as_slice()),
            ("carol", &[Role::Auditor][..])
        );
        auth.authenticate(&signed(&old_key, "2026-old", "carol"))
            .await
            .expect("again");
        assert_eq!(
            fetches.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the keys are cached"
        );

        // The provider rotates: a token with the new key id makes the service refetch.
        *published.lock().expect("lock") = JwkSet {
            keys: vec![new_jwk],
        };
        auth.authenticate(&signed(&new_key, "2026-new", "carol"))
            .await
            .expect("signed by the rotated key");
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
        // A key that is not published is refused, whoever signs with it.
        let (rogue, _) = ed25519("rogue");
        assert!(matches!(
            auth.authenticate(&signed(&rogue, "rogue", "mallory")).await,
            Err(AuthError::Invalid(_))
        ));
        // A rogue signature under a published key id is refused too.
        assert!(matches!(
            auth.authenticate(&signed(&rogue, "2026-new", "mallory"))
                .await,
            Err(AuthError::Invalid(_))
        ));
        // With keys from the provider, a token signed with a shared secret (HS256, the
        // algorithm-confusion attack) is refused.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("2026-new".into());
        let t = now();
        let hs = encode(
            &header,
            &serde_json::json!({"sub": "mallory", "roles": ["platform_admin"], "iss": "https://idp.test/", "aud": "api://libertum", "nbf": t, "exp": t + 60}),
            &EncodingKey::from_secret(b"anything"),
        )
        .expect("signed");
        assert!(matches!(
            auth.authenticate(&hs).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn a_failing_jwks_is_unavailable_not_unauthenticated_and_is_not_hammered() {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = {
            let hits = hits.clone();
            axum::Router::new().route(
                "/keys",
                axum::routing::get(move || {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async { StatusCode::INTERNAL_SERVER_ERROR }
                }),
            )
        };
        let url = serve_keys(app).await;
        let auth = Authenticator::jwks(&url, "https://idp.test/", "api://libertum");
        let (key, _) = ed25519("k");
        for _ in 0..3 {
            assert!(matches!(
                auth.authenticate(&signed(&key, "k", "carol")).await,
                Err(AuthError::KeysUnavailable(_))
            ));
        }
        let answer = unauthorized(AuthError::KeysUnavailable("down".into()));
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            answer
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"30"[..]),
            "the caller is told when to try again"
        );
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one attempt, then the provider is left alone for a while"
        );
    }

    #[tokio::test]
    async fn oversized_critical_and_everlasting_tokens_are_refused() {
        let (auth, signer) = dev();
        let t = now();
        let forever = signer.token_at("alice", &[Role::Auditor], None, t, 1_000_000_000_000_000);
        assert!(matches!(
            auth.authenticate(&forever).await,
            Err(AuthError::Invalid(e)) if e.contains("days")
        ));
        let week = signer.token_at("alice", &[Role::Auditor], None, t, t + 6 * 86_400);
        assert!(auth.authenticate(&week).await.is_ok(), "within the maximum");
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp-extension".into()]);
        let claims = serde_json::json!({"sub": "alice", "roles": ["auditor"], "iss": "iss-test",
            "aud": "aud-test", "nbf": t, "exp": t + 60});
        let critical = encode(&header, &claims, &EncodingKey::from_secret(SECRET)).expect("signed");
        assert!(matches!(
            auth.authenticate(&critical).await,
            Err(AuthError::Invalid(e)) if e.contains("critical")
        ));
        // A 60 KB header is refused on its size, before it is decoded.
        let huge = format!("{}.{}.sig", b64(&vec![b'a'; 60 * 1024]), b64(b"{}"));
        let started = Instant::now();
        assert!(matches!(
            auth.authenticate(&huge).await,
            Err(AuthError::Invalid(e)) if e.contains("at most")
        ));
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn jwks_keys_for_encryption_never_verify_a_signature() {
        let (sig_key, mut sig_jwk) = ed25519("sig");
        let (enc_key, mut enc_jwk) = ed25519("enc");
        let (ops_key, mut ops_jwk) = ed25519("ops");
        sig_jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        enc_jwk.common.public_key_use = Some(PublicKeyUse::Encryption);
        ops_jwk.common.key_operations = Some(vec![KeyOperations::Encrypt]);
        let set = JwkSet {
            keys: vec![sig_jwk, enc_jwk, ops_jwk],
        };
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let set = set.clone();
                async move { axum::Json(set) }
            }),
        );
        let url = serve_keys(app).await;
        let auth = Authenticator::jwks(&url, "https://idp.test/", "api://libertum");
        assert!(
            auth.authenticate(&signed(&sig_key, "sig", "a"))
                .await
                .is_ok()
        );
        for (key, kid) in [(&enc_key, "enc"), (&ops_key, "ops")] {
            assert!(
                matches!(
                    auth.authenticate(&signed(key, kid, "a")).await,
                    Err(AuthError::Invalid(_))
                ),
                "{kid}"
            );
        }
    }
}
