//! Wire types of the Docker Cloud API v1 (the `infra` and `audit` subsystems) as Flotilla
//! serves them.
//!
//! The contract is the one python-dockercloud 1.0.12 and the docker-cloud CLI 1.0.9 consume
//! (`shared/design/dockercloud-api.md`); these types follow it field by field. Design decisions:
//! * Every field the clients read is always present, `null` when unknown — the CLI raises
//!   on a missing attribute but prints a `None` happily. So optional fields are `Option`
//!   without `skip_serializing_if`.
//! * Dates are strings in the one RFC 2822 shape the CLI parses ([`date`]); they are kept as
//!   `String` on the wire types so a type can be built from any source without a time crate.
//! * Cross-references are resource URIs built and parsed in one place ([`uri`]), because
//!   the CLI splits them by position and a misplaced segment breaks it silently.

pub mod agent;
#[cfg(feature = "client")]
pub mod client;
pub mod date;
pub mod types;
pub mod uri;

#[cfg(feature = "client")]
pub use client::{AgentClient, Client, Reply};
pub use types::*;
