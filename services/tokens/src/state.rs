//! The book as the engine's state machine.

use libertum_domain::{Id, Result, token};
use libertum_events::TOKENS_SOURCE;
use libertum_store::{Described, StateMachine};
use time::OffsetDateTime;

/// Business counter: token events recorded, by type (issued, transferred, redeemed, ...).
pub const TOKEN_EVENTS: &str = "libertum_token_events_total";

/// The actor of a hold's expiry: the service's clock, not a person.
pub const HOLD_CLOCK: &str = "system:hold-expiry";

/// A command and who gives it.
pub struct Command {
    pub actor: Id,
    pub command: token::Command,
}

/// The book, and the outcome of each operation of the last batch executed (read by the
/// batch's reply, right after; never part of a snapshot).
#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TokensState(
    pub token::Book,
    #[serde(skip)] pub Vec<Option<libertum_domain::Error>>,
);

impl StateMachine for TokensState {
    type Command = Command;
    type Event = token::Event;
    const SOURCE: &'static str = TOKENS_SOURCE;

    fn execute(&mut self, command: Command, now: OffsetDateTime) -> Result<Vec<token::Event>> {
        let ctx = token::Context {
            now,
            actor: command.actor,
        };
        let events = match &command.command {
            token::Command::Batch {
                token_id,
                operations,
                mode,
            } => {
                let (events, outcomes) = self.0.decide_batch(token_id, operations, *mode, &ctx)?;
                self.1 = outcomes;
                events
            }
            other => self.0.decide(other, &ctx)?,
        };
        for event in &events {
            self.0.apply(event);
            metrics::counter!(TOKEN_EVENTS, "type" => event.change.name()).increment(1);
        }
        Ok(events)
    }

    fn apply(&mut self, event: &token::Event) {
        self.0.apply(event);
    }

    fn take_index(&mut self) -> Vec<(String, Vec<u8>)> {
        self.0.take_index()
    }

    /// A token's commands go to its partition; investors, what is known of assets and the
    /// claims of new token classes (their symbols and assets are unique across partitions) to
    /// the registry.
    fn partition_key(command: &Command) -> Option<&str> {
        use token::Command as C;
        match &command.command {
            C::ObserveAsset { .. }
            | C::ObserveAssetIssuer { .. }
            | C::RegisterInvestor { .. }
            | C::UpdateInvestor { .. }
            | C::ClaimToken(_) => None,
            C::CreateToken(spec) | C::OpenToken { spec, .. } => Some(spec.id.as_str()),
            C::UpdateRules { token_id, .. }
            | C::Operate { token_id, .. }
            | C::Batch { token_id, .. }
            | C::ExpireHolds { token_id, .. }
            | C::Distribute { token_id, .. } => Some(token_id.as_str()),
        }
    }

    /// The claimed token classes to open, each in its partition, and the holds past their
    /// deadline to expire (the service's clock is their actor).
    fn pending(&self, now: OffsetDateTime) -> Vec<Command> {
        let expiries = self
            .0
            .expired_holds(now)
            .into_iter()
            .map(|command| Command {
                actor: Id::from(HOLD_CLOCK),
                command,
            });
        self.0
            .unopened()
            .into_iter()
            .map(|(command, actor)| Command { actor, command })
            .chain(expiries)
            .collect()
    }

    fn describe(event: &token::Event) -> Described<'_> {
        Described {
            family: "token",
            name: event.change.name(),
            subject: event.change.key(),
            actor: &event.actor,
            time: event.at,
        }
    }
}
