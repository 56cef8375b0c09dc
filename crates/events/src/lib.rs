//! The envelope of every event: CloudEvents 1.0 in its JSON structured form, with the
//! `partitionkey` and `sequence` extensions, and the names of the topics.

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
    /// Extension: the version of the subject's stream after this event, as decimal digits.
    pub sequence: String,
    /// Extension: who caused the event.
    pub actor: String,
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
        sequence: u64,
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
            sequence: sequence.to_string(),
            actor: actor.into(),
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
        if event.id.is_empty() || event.subject.is_empty() || event.sequence.parse::<u64>().is_err()
        {
            return Err(Error::Unexpected("id, subject or sequence"));
        }
        Ok(event)
    }

    /// Parses `data` into the payload type the event's family defines.
    pub fn data<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_str(self.data.get())?)
    }

    pub fn sequence(&self) -> u64 {
        self.sequence.parse().unwrap_or(0)
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
        assert_eq!(back.sequence(), 7);
        assert_eq!(back.data.get(), r#"{"amount":"5"}"#);
    }

    #[test]
    fn events_from_another_source_or_family_are_refused() {
        let bytes = sample().to_bytes();
        assert!(CloudEvent::decode(&bytes, ASSETS_SOURCE, "token").is_err());
        assert!(CloudEvent::decode(&bytes, TOKENS_SOURCE, "asset").is_err());
        assert!(CloudEvent::decode(b"{\"id\":1}", TOKENS_SOURCE, "token").is_err());
    }
}
