//! The ledger's audit metric: whole after a clean history, broken once the stored chain holds an
//! entry that is not the writer's. Its own test binary: the metrics are process-wide.

mod common;

use common::{feed_sample, spawn};
use libertum_store::Commit;

fn line(name: &str) -> Option<String> {
    libertum_platform::http_metrics::recorder()
        .render()
        .lines()
        .find(|l| l.starts_with(name))
        .map(str::to_owned)
}

#[tokio::test]
async fn the_audit_reports_a_whole_chain_then_a_broken_one() {
    let s = spawn().await;
    feed_sample(&s).await;
    s.ledger.clone().audit().await;
    assert_eq!(
        line("libertum_ledger_chain_valid").as_deref(),
        Some("libertum_ledger_chain_valid 1")
    );
    assert_eq!(
        line("libertum_ledger_chain_verifications_total{outcome=\"broken\"}").as_deref(),
        Some("libertum_ledger_chain_verifications_total{outcome=\"broken\"} 0"),
        "every outcome's series starts at zero"
    );

    // Something other than the writer appends to the stored log.
    let store = s.ledger.engine().store();
    let head = store.head().await.expect("head");
    let forged =
        br#"{"specversion":"1.0","id":"forged","type":"ledger.entry","source":"/x","data":{}}"#;
    store
        .commit(Commit {
            expected_head: head,
            events: vec![forged.to_vec()],
            ..Commit::default()
        })
        .await
        .expect("the forged entry is stored");

    s.ledger.clone().audit().await;
    assert_eq!(
        line("libertum_ledger_chain_valid").as_deref(),
        Some("libertum_ledger_chain_valid 0")
    );
    assert_eq!(
        line("libertum_ledger_chain_verifications_total{outcome=\"broken\"}").as_deref(),
        Some("libertum_ledger_chain_verifications_total{outcome=\"broken\"} 1")
    );
}
