//! The envelope of every event: CloudEvents 1.0 in its JSON structured form, with the
//! `partitionkey` and `sequence` extensions, Libertum's `subjectversion` extension, and the names
//! of the topics.
//!
//! `sequence` orders the events of one source as the CloudEvents sequence extension says:
//! lexicographically. It is the event's position in its service's log, written as 20 decimal
//! digits with leading zeros, so that string order is numeric order. `subjectversion` is the
//! version of the event's subject (asset, token or investor) after it, 1 for the subject's first
//! event: consumers apply each subject's events in that order and ignore older ones.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The assets service's event stream.
pub const ASSETS_TOPIC: &str = "libertum.assets.events";
/// The tokens service's event stream.
pub const TOKENS_TOPIC: &str = "libertum.tokens.events";

/// The topics the services' events travel on (`LIBERTUM_KAFKA_ASSETS_TOPIC`,
/// `LIBERTUM_KAFKA_TOKENS_TOPIC`); [`ASSETS_TOPIC`] and [`TOKENS_TOPIC`] unless configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub assets: String,
    pub tokens: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            assets: ASSETS_TOPIC.to_owned(),
            tokens: TOKENS_TOPIC.to_owned(),
        }
    }
}

impl Topics {
    pub fn all(&self) -> [&str; 2] {
        [&self.assets, &self.tokens]
    }
}

/// The width of `sequence`: every `u64` fits in 20 digits.
pub const SEQUENCE_DIGITS: usize = 20;

/// `position` as a CloudEvents `sequence`: zero-padded, so that string order is numeric order.
pub fn sequence_of(position: u64) -> String {
    format!("{position:0SEQUENCE_DIGITS$}")
}

pub const ASSETS_SOURCE: &str = "/libertum/assets";
pub const TOKENS_SOURCE: &str = "/libertum/tokens";

/// A CloudEvents 1.0 event. `data` is kept as raw JSON, so relaying never re-encodes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    pub subject: String,
    pub datacontenttype: String,
    /// Extension: the key that keeps one asset's or token's events in order (the Kafka key).
    pub partitionkey: String,
    /// Extension: the event's position in its source's log, as [`SEQUENCE_DIGITS`] decimal
    /// digits with leading zeros (lexicographic order is the log's order).
    pub sequence: String,
    /// Extension: the version of the subject's stream after this event, as decimal digits.
    /// Absent in events written before it existed, whose `sequence` held that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjectversion: Option<String>,
    /// Extension: who caused the event.
    pub actor: String,
    /// Extension (CloudEvents distributed tracing): the W3C trace context of the decision that
    /// made the event, when traces are exported. The relay continues the trace from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub data: Box<RawValue>,
}

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the event is not valid CloudEvents JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the event's {0} is not what this consumer accepts")]
    Unexpected(&'static str),
}

impl CloudEvent {
    /// Builds an event of type `libertum.{family}.{name}.v1`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        source: &str,
        family: &str,
        name: &str,
        time: time::OffsetDateTime,
        subject: &str,
        position: u64,
        subject_version: u64,
        actor: &str,
        data: &impl Serialize,
    ) -> Result<Self, Error> {
        Ok(CloudEvent {
            specversion: "1.0".into(),
            id,
            source: source.into(),
            ty: format!("libertum.{family}.{name}.v1"),
            time,
            subject: subject.into(),
            datacontenttype: "application/json".into(),
            partitionkey: subject.into(),
            sequence: sequence_of(position),
            subjectversion: Some(subject_version.to_string()),
            actor: actor.into(),
            traceparent: None,
            data: serde_json::value::to_raw_value(data)?,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and raw JSON always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks an event: CloudEvents 1.0, JSON data, a type of the expected family
    /// from the expected source.
    pub fn decode(bytes: &[u8], source: &str, family: &str) -> Result<Self, Error> {
        let event: CloudEvent = serde_json::from_slice(bytes)?;
        if event.specversion != "1.0" {
            return Err(Error::Unexpected("specversion"));
        }
        if event.source != source {
            return Err(Error::Unexpected("source"));
        }
        if event.datacontenttype != "application/json" {
            return Err(Error::Unexpected("datacontenttype"));
        }
        let family_ok = event
            .ty
            .strip_prefix("libertum.")
            .and_then(|t| t.strip_prefix(family))
            .and_then(|t| t.strip_prefix('.'))
            .is_some_and(|t| t.ends_with(".v1"));
        if !family_ok {
            return Err(Error::Unexpected("type"));
        }
        let number = |s: &str| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok()
        };
        if event.id.is_empty()
            || event.subject.is_empty()
            || !number(&event.sequence)
            || !event.subjectversion.as_deref().is_none_or(number)
        {
            return Err(Error::Unexpected("id, subject, sequence or subjectversion"));
        }
        // A trace context is short and plain (`00-{32 hex}-{16 hex}-{2 hex}` today); what it
        // means is checked where a span continues from it.
        if event
            .traceparent
            .as_deref()
            .is_some_and(|t| t.len() > 128 || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::Unexpected("traceparent"));
        }
        Ok(event)
    }

    /// Parses `data` into the payload type the event's family defines.
    pub fn data<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_str(self.data.get())?)
    }

    /// The event's position in its source's log (for events written before `subjectversion`
    /// existed, the subject's version).
    pub fn sequence(&self) -> u64 {
        self.sequence.parse().unwrap_or(0)
    }

    /// The version of the event's subject after it: the order in which a consumer applies the
    /// subject's events.
    pub fn subject_version(&self) -> u64 {
        match &self.subjectversion {
            Some(version) => version.parse().unwrap_or(0),
            None => self.sequence(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CloudEvent {
        CloudEvent::new(
            "ev1".into(),
            TOKENS_SOURCE,
            "token",
            "transferred",
            time::OffsetDateTime::UNIX_EPOCH,
            "tok_1",
            42,
            7,
            "agent",
            &serde_json::json!({"amount": "5"}),
        )
        .expect("builds")
    }

    #[test]
    fn an_event_round_trips_through_its_bytes() {
        let bytes = sample().to_bytes();
        let back = CloudEvent::decode(&bytes, TOKENS_SOURCE, "token").expect("decodes");
        assert_eq!(back.ty, "libertum.token.transferred.v1");
        assert_eq!(back.sequence(), 42);
        assert_eq!(back.sequence, "00000000000000000042");
        assert_eq!(back.subject_version(), 7);
        assert_eq!(back.data.get(), r#"{"amount":"5"}"#);
    }

    #[test]
    fn events_from_another_source_or_family_are_refused() {
        let bytes = sample().to_bytes();
        assert!(CloudEvent::decode(&bytes, ASSETS_SOURCE, "token").is_err());
        assert!(CloudEvent::decode(&bytes, TOKENS_SOURCE, "asset").is_err());
        assert!(CloudEvent::decode(b"{\"id\":1}", TOKENS_SOURCE, "token").is_err());
    }

    #[test]
    fn sequences_sort_as_strings_in_log_order() {
        let mut sequences: Vec<String> = [10u64, 9, 1, 100, u64::MAX, 0]
            .into_iter()
            .map(sequence_of)
            .collect();
        sequences.sort();
        let numbers: Vec<u64> = sequences.iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(numbers, [0, 1, 9, 10, 100, u64::MAX]);
        assert!(sequences.iter().all(|s| s.len() == SEQUENCE_DIGITS));
    }

    #[test]
    fn an_event_written_before_subjectversion_reads_its_version_from_sequence() {
        let mut old = sample();
        old.sequence = "7".into();
        old.subjectversion = None;
        let bytes = old.to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("subjectversion"));
        let back = CloudEvent::decode(&bytes, TOKENS_SOURCE, "token").expect("decodes");
        assert_eq!(back.subject_version(), 7);
    }

    #[test]
    fn a_trace_context_travels_with_the_event_only_when_there_is_one() {
        let plain = sample().to_bytes();
        assert!(!String::from_utf8_lossy(&plain).contains("traceparent"));
        let mut traced = sample();
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        traced.traceparent = Some(value.into());
        let back = CloudEvent::decode(&traced.to_bytes(), TOKENS_SOURCE, "token").expect("decodes");
        assert_eq!(back.traceparent.as_deref(), Some(value));
        for bad in ["a b".to_owned(), "x".repeat(129), "é".to_owned()] {
            traced.traceparent = Some(bad.clone());
            assert!(
                CloudEvent::decode(&traced.to_bytes(), TOKENS_SOURCE, "token").is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_sequence_or_version_that_is_not_digits_is_refused() {
        for (sequence, version) in [("-1", "1"), ("1", "+1"), ("", "1"), ("1", ""), ("1.0", "1")] {
            let mut event = sample();
            event.sequence = sequence.into();
            event.subjectversion = Some(version.into());
            assert!(
                CloudEvent::decode(&event.to_bytes(), TOKENS_SOURCE, "token").is_err(),
                "{sequence:?} {version:?}"
            );
        }
    }
}
