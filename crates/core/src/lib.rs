//! Flotilla's domain model and every decision it makes.
//!
//! This crate is pure: no I/O, no async runtime, no AWS SDK types. Every function is
//! deterministic (ties are broken by stable names, never by hash order or time), so the
//! decisions that matter — where a node goes, which node is removed, which subnet CIDR an
//! AZ gets, whether a state change is legal — are unit- and property-tested in milliseconds.
//!
//! The [`cloud::Cloud`] trait names the operations Flotilla needs from a cloud in terms of
//! intent (`ensure_network`, `launch_nodes`, …). The real implementation lives in the `aws`
//! crate; [`fake::FakeCloud`] is an in-memory one for fast tests. [`converge`] is the one
//! engine that drives any `Cloud` from desired state to observed state: it holds no state of
//! its own between calls, so a crash at any point is recovered by simply calling it again.

pub mod bootstrap;
pub mod cloud;
pub mod converge;
pub mod fake;
pub mod network;
pub mod placement;
pub mod spec;
pub mod state;
pub mod tags;

pub use cloud::{Cloud, CloudError};
pub use spec::{ClusterSpec, ProviderOptions};
