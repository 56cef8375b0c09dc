//! What the ledger tells its operators about its own integrity: the chain verified as stored,
//! periodically and on request, and every reconciliation's outcome, as metrics the alerts
//! (`deploy/observability/prometheus/alerts.yml`) watch.

use crate::api::VerificationView;

/// 1 while the last verification found the chain whole, 0 once it found it broken.
pub const CHAIN_VALID: &str = "libertum_ledger_chain_valid";
/// Verifications by outcome: valid, broken, or error (the store could not be read).
pub const VERIFICATIONS: &str = "libertum_ledger_chain_verifications_total";
/// Tokens compared by a reconciliation, by status: matched, mismatched or behind.
pub const RECONCILED: &str = "libertum_ledger_reconciled_tokens_total";

const OUTCOMES: [&str; 3] = ["valid", "broken", "error"];
const STATUSES: [&str; 3] = ["matched", "mismatched", "behind"];

/// Describes the metrics and starts every series at zero, so that an alert on their increase
/// sees the first one.
pub fn describe() {
    metrics::describe_gauge!(
        CHAIN_VALID,
        "1 while the last verification of the ledger's hash chain found it whole, 0 once broken"
    );
    metrics::describe_counter!(
        VERIFICATIONS,
        "verifications of the whole ledger chain as stored, by outcome"
    );
    metrics::describe_counter!(
        RECONCILED,
        "tokens compared with the tokens service by a reconciliation, by status"
    );
    for outcome in OUTCOMES {
        metrics::counter!(VERIFICATIONS, "outcome" => outcome).increment(0);
    }
    for status in STATUSES {
        metrics::counter!(RECONCILED, "status" => status).increment(0);
    }
}

/// Records one verification: its outcome, and whether the chain is whole. A store that cannot
/// be read says nothing about the chain, so the gauge keeps its last value.
pub fn verified<E>(result: &Result<VerificationView, E>) {
    let outcome = match result {
        Ok(view) => {
            metrics::gauge!(CHAIN_VALID).set(if view.valid { 1.0 } else { 0.0 });
            if view.valid { "valid" } else { "broken" }
        }
        Err(_) => "error",
    };
    metrics::counter!(VERIFICATIONS, "outcome" => outcome).increment(1);
}

/// Records a reconciled token's status.
pub fn reconciled(status: &str) {
    let status = STATUSES
        .into_iter()
        .find(|s| *s == status)
        .unwrap_or("behind");
    metrics::counter!(RECONCILED, "status" => status).increment(1);
}
