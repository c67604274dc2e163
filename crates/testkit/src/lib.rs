//! Test-only helpers for Flotilla: a moto server on a free loopback port, a
//! fault/latency proxy to put in front of it, and an instance runner that starts a real
//! `flotilla agent` for every emulated instance ([`runner`]), the one launcher of `flotilla
//! server` processes ([`server`]) and a fresh moto account with its proxies ([`account`]);
//! emulated machines with their own network namespace and Docker engine ([`host`], with the
//! offline busybox image of [`docker`]), which the runner boots per instance in docker mode;
//! a real PostgreSQL server per test process with a fresh database per test ([`postgres`]);
//! a real OpenLDAP server with TLS per test ([`slapd`]).
//!
//! Tests drive the real AWS SDK against moto instead of mocking the SDK, so
//! that request serialisation, error parsing and retry classification are the
//! production ones; the proxy adds what moto cannot do (observing calls and
//! failing them the way AWS does).

pub mod account;
pub mod cache;
pub mod docker;
pub mod host;
pub mod inspect;
pub mod moto;
pub mod ports;
pub mod postgres;
pub mod proxy;
pub mod runner;
pub mod server;
pub mod slapd;

pub use account::MotoAccount;
pub use docker::BUSYBOX_IMAGE;
pub use host::{Host, HostNetwork, HostSpec};
pub use moto::Moto;
pub use ports::free_port;
pub use proxy::{CallRecord, Fault, FaultProxy, Rule};
pub use runner::{InstanceRunner, RunnerConfig};
pub use server::{Credentials, DatabaseKind, ServerBuilder, ServerProcess};
