//! The rules of Libertum: assets, tokens, compliance, distributions and the ledger's hash chain.
//!
//! Nothing here performs I/O or reads a clock: callers pass the time in, so every rule is
//! deterministic and can be replayed from the event log.

pub mod asset;
mod error;
pub mod ledger;
pub mod token;
mod value;

pub use error::{Error, ErrorKind};
pub use value::{Amount, Country, Currency, Id, Timestamp, bounded_text, optional_text};

/// The result type of every rule in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
