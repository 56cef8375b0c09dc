//! The registry as the engine's state machine.

use libertum_domain::{Result, asset};
use libertum_events::ASSETS_SOURCE;
use libertum_store::{Described, StateMachine};
use time::OffsetDateTime;

/// A command and who gives it.
pub struct Command {
    pub actor: String,
    pub command: asset::Command,
}

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct AssetsState(pub asset::Registry);

/// The cache key of an asset's representation.
pub fn cache_key(id: &str) -> String {
    format!("asset:{id}")
}

impl StateMachine for AssetsState {
    type Command = Command;
    type Event = asset::Event;
    const SOURCE: &'static str = ASSETS_SOURCE;

    fn execute(&mut self, command: Command, now: OffsetDateTime) -> Result<Vec<asset::Event>> {
        let ctx = asset::Context {
            now,
            actor: command.actor,
        };
        let events = self.0.decide(&command.command, &ctx)?;
        for event in &events {
            self.0.apply(event);
        }
        Ok(events)
    }

    fn apply(&mut self, event: &asset::Event) {
        self.0.apply(event);
    }

    /// Each asset's commands go to its partition; assets share nothing.
    fn partition_key(command: &Command) -> Option<&str> {
        Some(command.command.asset_id().as_str())
    }

    fn describe(event: &asset::Event) -> Described<'_> {
        Described {
            family: "asset",
            name: event.name(),
            subject: &event.asset_id,
            actor: &event.actor,
            time: event.at,
        }
    }

    fn invalidates(event: &asset::Event, keys: &mut Vec<String>) {
        keys.push(cache_key(&event.asset_id));
    }
}
