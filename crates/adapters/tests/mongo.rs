//! The MongoDB event store against a real MongoDB-wire server (nx-27017) over a real connection.

use std::sync::Arc;

use libertum_adapters::{MongoSettings, MongoStore};
use libertum_store::{Commit, EventStore, StoreError, contract};
use libertum_testkit::servers;

#[tokio::test]
async fn the_mongodb_store_honours_the_event_store_contract() {
    let (_server, uri) = servers::mongo();
    let settings = MongoSettings::new(&uri, "contract");
    contract::event_store(Box::new(move || {
        let settings = settings.clone();
        Box::pin(async move {
            Arc::new(MongoStore::open(&settings).await.expect("open")) as Arc<dyn EventStore>
        })
    }))
    .await;
}

#[tokio::test]
async fn the_mongodb_store_honours_the_lease_contract() {
    let (_server, uri) = servers::mongo();
    let settings = MongoSettings::new(&uri, "leases");
    contract::leases(Box::new(move || {
        let settings = settings.clone();
        Box::pin(async move {
            Arc::new(MongoStore::open(&settings).await.expect("open")) as Arc<dyn EventStore>
        })
    }))
    .await;
}

#[tokio::test]
async fn the_mongodb_store_honours_the_members_contract() {
    let (_server, uri) = servers::mongo();
    let settings = MongoSettings::new(&uri, "members");
    contract::members(Box::new(move || {
        let settings = settings.clone();
        Box::pin(async move {
            Arc::new(MongoStore::open(&settings).await.expect("open")) as Arc<dyn EventStore>
        })
    }))
    .await;
}

#[tokio::test]
async fn two_writers_racing_from_the_same_head_cannot_both_append() {
    let (_server, uri) = servers::mongo();
    let settings = MongoSettings::new(&uri, "race");
    let a = MongoStore::open(&settings).await.expect("open a");
    let b = MongoStore::open(&settings).await.expect("open b");
    let commit = |id: &str| Commit {
        expected_head: 0,
        events: vec![contract::event(id, "k")],
        ..Commit::default()
    };
    let (ra, rb) = tokio::join!(a.commit(commit("from-a")), b.commit(commit("from-b")));
    let conflicts = [&ra, &rb]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
        .count();
    assert_eq!(conflicts, 1, "exactly one writer wins: {ra:?} {rb:?}");
    assert_eq!(
        a.read(0, 10).await.unwrap().len(),
        1,
        "one event, not two, at position 1"
    );
}

#[tokio::test]
async fn an_event_id_is_stored_once() {
    let (_server, uri) = servers::mongo();
    let store = MongoStore::open(&MongoSettings::new(&uri, "unique"))
        .await
        .expect("open");
    store
        .commit(Commit {
            expected_head: 0,
            events: vec![contract::event("same", "k")],
            ..Commit::default()
        })
        .await
        .expect("first");
    let again = store
        .commit(Commit {
            expected_head: 1,
            events: vec![contract::event("same", "k")],
            ..Commit::default()
        })
        .await;
    assert!(
        again.is_err(),
        "the unique index on the event id refuses a second copy"
    );
    assert_eq!(store.read(0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_bad_write_concern_is_refused_at_start() {
    let mut settings = MongoSettings::new("mongodb://127.0.0.1:1/?directConnection=true", "x");
    settings.write_concern = "most".into();
    let error = MongoStore::open(&settings).await.err().expect("refused");
    assert!(error.to_string().contains("write concern"), "{error}");
}

/// Set in the child process of the test below, which opens a transaction, writes in it and dies.
const DIE_IN_TRANSACTION: &str = "LIBERTUM_TEST_DIE_IN_TRANSACTION";

/// A writer killed between its writes and its commit (a service's `kill -9` mid-commit) leaves
/// nothing that another client reads, and the next writer's commit is read back.
#[tokio::test]
async fn what_a_writer_killed_mid_transaction_wrote_is_never_read() {
    use mongodb::bson::doc;
    if let Ok(uri) = std::env::var(DIE_IN_TRANSACTION) {
        let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
        let events = client
            .database("abandoned")
            .collection::<mongodb::bson::Document>("events");
        let mut session = client.start_session().await.expect("session");
        session.start_transaction().await.expect("transaction");
        events
            .insert_one(
                doc! {"_id": 1_000_i64, "seq": 1_000_i64, "event_id": "orphan", "body": "{}"},
            )
            .session(&mut session)
            .await
            .expect("written inside the transaction");
        // No commit, no abort, no goodbye: the process is gone, as under kill -9.
        std::process::abort();
    }

    let (_server, uri) = servers::mongo();
    let settings = MongoSettings::new(&uri, "abandoned");
    drop(MongoStore::open(&settings).await.expect("indexes created"));
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "what_a_writer_killed_mid_transaction_wrote_is_never_read",
            "--nocapture",
        ])
        .env(DIE_IN_TRANSACTION, &uri)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the writer process");
    assert!(!status.success(), "the writer was meant to die: {status}");
    // The server notices the closed connection on its own schedule.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let store = MongoStore::open(&settings).await.expect("open");
    assert_eq!(
        store.head().await.unwrap(),
        0,
        "the orphan write is not the head"
    );
    assert!(
        store.read(0, 10).await.unwrap().is_empty(),
        "nor in the log"
    );
    store
        .commit(Commit {
            expected_head: 0,
            events: vec![contract::event("after", "k")],
            ..Commit::default()
        })
        .await
        .expect("the next writer commits");
    drop(store);
    let again = MongoStore::open(&settings).await.expect("reopen");
    let log = again.read(0, 10).await.unwrap();
    assert_eq!(log.len(), 1, "exactly the committed event: {log:?}");
    assert_eq!(again.head().await.unwrap(), 1);
}

/// A service killed while it saves a snapshot leaves chunks without a manifest: the previous
/// snapshot stays the latest, and the next save deletes the orphans.
#[tokio::test]
async fn a_snapshot_save_interrupted_before_its_manifest_changes_nothing() {
    use mongodb::bson::{Binary, Document, doc, spec::BinarySubtype};
    let (_server, uri) = servers::mongo();
    let settings = MongoSettings::new(&uri, "torn_snapshot");
    let store = MongoStore::open(&settings).await.expect("open");
    store
        .save_snapshot(3, b"state at 3".to_vec())
        .await
        .unwrap();
    let snapshots = store.database().collection::<Document>("snapshots");
    // What a save killed after its first chunk leaves behind.
    snapshots
        .insert_one(doc! {
            "_id": "00000000000000000009-000000000000000000000000000000000000001:000000",
            "snapshot": "00000000000000000009-000000000000000000000000000000000000001",
            "i": 0_i64,
            "data": Binary { subtype: BinarySubtype::Generic, bytes: b"half of".to_vec() },
        })
        .await
        .unwrap();
    assert_eq!(
        store.latest_snapshot().await.unwrap(),
        Some((3, b"state at 3".to_vec())),
        "the interrupted save is invisible"
    );
    store
        .save_snapshot(9, b"state at 9".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.latest_snapshot().await.unwrap(),
        Some((9, b"state at 9".to_vec()))
    );
    assert_eq!(
        snapshots.count_documents(doc! {}).await.unwrap(),
        2,
        "one chunk and the manifest: older and orphaned chunks are gone"
    );
}

/// Two replicas saving snapshots of one log: whichever saves last, the newer snapshot stays the
/// latest, whole.
#[tokio::test]
async fn an_older_snapshot_saved_after_a_newer_one_does_not_replace_it() {
    let (_server, uri) = servers::mongo();
    let settings = MongoSettings::new(&uri, "racing_snapshots");
    let a = MongoStore::open(&settings).await.expect("open a");
    let b = MongoStore::open(&settings).await.expect("open b");
    a.save_snapshot(10, b"state at 10".to_vec()).await.unwrap();
    b.save_snapshot(7, b"state at 7".to_vec()).await.unwrap();
    assert_eq!(
        a.latest_snapshot().await.unwrap(),
        Some((10, b"state at 10".to_vec())),
        "the newer snapshot is still the latest, with its chunks"
    );
    let snapshots = a
        .database()
        .collection::<mongodb::bson::Document>("snapshots");
    assert_eq!(
        snapshots
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap(),
        2,
        "the older one's chunk is gone: one chunk and the manifest"
    );
}
