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
