//! Metric names of the engine and the consumers, with their descriptions.

pub const COMMITS: &str = "libertum_store_commits_total";
pub const COMMIT_SECONDS: &str = "libertum_store_commit_duration_seconds";
pub const BATCH_SIZE: &str = "libertum_store_commit_batch_size";
pub const EVENTS_APPENDED: &str = "libertum_events_appended_total";
pub const EVENTS_CONSUMED: &str = "libertum_events_consumed_total";
pub const EVENTS_REJECTED: &str = "libertum_events_rejected_total";
pub const CONSUMER_LAG: &str = "libertum_consumer_lag_events";
pub const CONSUMER_RETRIES: &str = "libertum_consumer_batch_retries_total";
pub const SNAPSHOTS: &str = "libertum_snapshots_total";
pub const SNAPSHOT_BYTES: &str = "libertum_snapshot_bytes";
pub const SNAPSHOT_SECONDS: &str = "libertum_snapshot_duration_seconds";
pub const SNAPSHOT_FALLBACKS: &str = "libertum_snapshot_fallbacks_total";
pub const COMMANDS_REFUSED: &str = "libertum_commands_refused_total";
pub const COMMITS_FENCED: &str = "libertum_store_commits_fenced_total";

/// Registers the descriptions once at start-up.
pub fn describe() {
    metrics::describe_counter!(COMMITS, "durable commits of a service's log");
    metrics::describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "time of one durable commit, fsync included"
    );
    metrics::describe_histogram!(
        BATCH_SIZE,
        "commands committed together in one group commit"
    );
    metrics::describe_counter!(
        EVENTS_APPENDED,
        "events appended to a service's log, by service"
    );
    metrics::describe_counter!(
        EVENTS_CONSUMED,
        "events a consumer has applied, by consumer and topic"
    );
    metrics::describe_counter!(
        EVENTS_REJECTED,
        "events a consumer refused as malformed or unexpected, by consumer and reason"
    );
    metrics::describe_gauge!(
        CONSUMER_LAG,
        "events of a topic a consumer has not applied yet"
    );
    metrics::describe_counter!(
        CONSUMER_RETRIES,
        "consumer batches tried again because their commit failed, by consumer and topic"
    );
    metrics::describe_counter!(SNAPSHOTS, "snapshots of a service's state saved");
    metrics::describe_gauge!(
        SNAPSHOT_BYTES,
        metrics::Unit::Bytes,
        "size of a service's latest snapshot"
    );
    metrics::describe_histogram!(
        SNAPSHOT_SECONDS,
        metrics::Unit::Seconds,
        "time to encode and save one snapshot"
    );
    metrics::describe_counter!(
        SNAPSHOT_FALLBACKS,
        "starts or restores that found the latest snapshot unusable and read the whole log"
    );
    metrics::describe_counter!(
        COMMITS_FENCED,
        "commits refused because another replica took the lease (a former owner's late writes)"
    );
    metrics::describe_counter!(
        COMMANDS_REFUSED,
        "commands refused by a rule, by service and code"
    );
}
