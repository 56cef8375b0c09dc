//! Snapshots: a service's state as of a position of its log, so that a start (or a failed
//! commit) reads the latest snapshot and the events after it instead of the whole log.
//!
//! A snapshot is `MAGIC`, the SHA-256 of the payload, then the payload: the state with the
//! engine's own bookkeeping (each subject's version, the latest event time), as MessagePack with
//! field names, so that a field added later with a default still reads an older snapshot. A
//! snapshot whose checksum, format or position does not hold is not used: the state is rebuilt
//! from the log, and the fallback is logged and counted.

use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::engine::Versions;

const MAGIC: &[u8; 8] = b"LBTSNAP1";
const HEADER: usize = MAGIC.len() + 32;

/// When the engine writes a snapshot of its state (`LIBERTUM_SNAPSHOT_EVERY_EVENTS`,
/// `LIBERTUM_SNAPSHOT_INTERVAL_SECONDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// After this many events since the last snapshot; 0: not on a count.
    pub every_events: u64,
    /// After this long, if any event was appended since the last snapshot; zero: not on time.
    pub interval: Duration,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_events: 50_000,
            interval: Duration::from_secs(300),
        }
    }
}

impl SnapshotPolicy {
    /// No snapshots: every start reads the whole log.
    pub const NEVER: SnapshotPolicy = SnapshotPolicy {
        every_events: 0,
        interval: Duration::ZERO,
    };

    pub fn is_never(&self) -> bool {
        self.every_events == 0 && self.interval.is_zero()
    }

    /// Whether a snapshot is due, `appended` events and `elapsed` after the last one.
    pub fn due(&self, appended: u64, elapsed: Duration) -> bool {
        appended > 0
            && ((self.every_events > 0 && appended >= self.every_events)
                || (!self.interval.is_zero() && elapsed >= self.interval))
    }
}

#[derive(Serialize)]
struct ImageRef<'a, S> {
    /// The sum of `heads`: what the snapshot is stored under, growing with every event.
    position: u64,
    /// Each partition's position (one for an unpartitioned service).
    heads: &'a [u64],
    last_time_ns: i128,
    versions: &'a Versions,
    state: &'a S,
}

#[derive(Deserialize)]
struct Image<S> {
    position: u64,
    /// Absent from a snapshot of an unpartitioned service written before partitions.
    #[serde(default)]
    heads: Vec<u64>,
    last_time_ns: i128,
    versions: Versions,
    state: S,
}

/// What a snapshot restores.
#[derive(Debug)]
pub(crate) struct Restored<S> {
    pub heads: Vec<u64>,
    pub last_time: OffsetDateTime,
    pub versions: Versions,
    pub state: S,
}

/// Encodes the state at `heads` (each partition's position); it is stored under their sum.
pub(crate) fn encode<S: Serialize>(
    heads: &[u64],
    last_time: OffsetDateTime,
    versions: &Versions,
    state: &S,
) -> Result<Vec<u8>, String> {
    let payload = rmp_serde::to_vec_named(&ImageRef {
        position: heads.iter().sum(),
        heads,
        last_time_ns: last_time.unix_timestamp_nanos(),
        versions,
        state,
    })
    .map_err(|e| format!("the state could not be encoded: {e}"))?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&Sha256::digest(&payload));
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Decodes a snapshot stored for `position`, checking its checksum and position.
pub(crate) fn decode<S: DeserializeOwned>(
    position: u64,
    bytes: &[u8],
) -> Result<Restored<S>, String> {
    if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a snapshot of this format".into());
    }
    let (sum, payload) = bytes[MAGIC.len()..].split_at(32);
    if Sha256::digest(payload).as_slice() != sum {
        return Err("its checksum does not match: the snapshot is corrupt".into());
    }
    let image: Image<S> = rmp_serde::from_slice(payload)
        .map_err(|e| format!("it does not decode into this version's state: {e}"))?;
    if image.position != position {
        return Err(format!(
            "it holds the state at {}, not at {position} as stored",
            image.position
        ));
    }
    let last_time = OffsetDateTime::from_unix_timestamp_nanos(image.last_time_ns)
        .map_err(|e| format!("its latest event time is out of range: {e}"))?;
    let heads = if image.heads.is_empty() {
        vec![image.position]
    } else if image.heads.iter().sum::<u64>() != image.position {
        return Err("its partitions' positions do not add up to its position".into());
    } else {
        image.heads
    };
    Ok(Restored {
        heads,
        last_time,
        versions: image.versions,
        state: image.state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct State {
        total: u64,
        names: Vec<String>,
    }

    fn sample() -> Vec<u8> {
        let mut versions = Versions::default();
        versions.insert("tok_1".into(), 3);
        let state = State {
            total: 7,
            names: vec!["a".into()],
        };
        encode(&[12], OffsetDateTime::UNIX_EPOCH, &versions, &state).unwrap()
    }

    #[test]
    fn a_snapshot_restores_what_was_encoded() {
        let restored: Restored<State> = decode(12, &sample()).unwrap();
        assert_eq!(restored.heads, vec![12]);
        assert_eq!(restored.versions.get("tok_1"), Some(&3));
        assert_eq!(restored.state.total, 7);
        assert_eq!(restored.last_time, OffsetDateTime::UNIX_EPOCH);
    }

    #[test]
    fn a_partitioned_snapshot_is_stored_under_the_sum_of_its_heads() {
        let bytes = encode(
            &[3, 0, 9],
            OffsetDateTime::UNIX_EPOCH,
            &Versions::default(),
            &State::default(),
        )
        .unwrap();
        let restored: Restored<State> = decode(12, &bytes).unwrap();
        assert_eq!(restored.heads, vec![3, 0, 9]);
        assert!(decode::<State>(3, &bytes).is_err());
    }

    #[test]
    fn a_flipped_byte_a_torn_tail_or_another_position_is_refused() {
        let mut flipped = sample();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(
            decode::<State>(12, &flipped)
                .unwrap_err()
                .contains("checksum")
        );
        let torn = &sample()[..HEADER + 3];
        assert!(decode::<State>(12, torn).unwrap_err().contains("checksum"));
        assert!(
            decode::<State>(13, &sample())
                .unwrap_err()
                .contains("not at 13")
        );
        assert!(decode::<State>(12, b"garbage").is_err());
    }

    #[test]
    fn a_snapshot_is_due_on_a_count_or_on_time_never_with_nothing_new() {
        let policy = SnapshotPolicy {
            every_events: 100,
            interval: Duration::from_secs(60),
        };
        assert!(policy.due(100, Duration::ZERO));
        assert!(policy.due(1, Duration::from_secs(60)));
        assert!(!policy.due(99, Duration::from_secs(59)));
        assert!(!policy.due(0, Duration::from_secs(3600)));
        assert!(!SnapshotPolicy::NEVER.due(1_000_000, Duration::from_secs(3600)));
    }
}
