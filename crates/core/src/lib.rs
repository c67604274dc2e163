//! Flotilla's domain model and every decision it makes.
//!
//! This crate is pure: no I/O, no async runtime, no AWS SDK types. Every function is
//! deterministic (ties are broken by stable names, never by hash order or time), so the
//! decisions that matter — where a node goes, which node is removed, which subnet CIDR an
//! AZ gets, whether a state change is legal — are unit- and property-tested in milliseconds.
//!
//! Every choice about the cloud is made by a planner in [`plan`]: `plan(desired, observed)`,
//! synchronous and deterministic. The [`cloud::Cloud`] trait names the operations an
//! executor carries plans out with, in terms of intent (`ensure_network`, `launch_nodes`,
//! …). The real implementation lives in the `aws` crate; [`fake::FakeCloud`] is an
//! in-memory one for fast tests. The executor itself is the server's `execute` module.

pub mod bootstrap;
pub mod cloud;
pub mod docker_access;
pub mod fake;
pub mod network;
pub mod placement;
pub mod plan;
pub mod spec;
pub mod state;
pub mod tags;

pub use cloud::{Cloud, CloudError};
pub use spec::{ClusterSpec, ProviderOptions};
