//! End-to-end tests of the `flotilla` binary as a user runs it, against moto through the
//! testkit proxy (one moto account per test).

mod agents;
mod aws_faults;
mod backup;
mod bundle;
mod client;
mod crash_matrix;
mod dashboard;
mod dockercloud_cli;
mod engine;
mod lifecycle;
mod link;
mod metrics;
mod ops;
mod replicas;
mod server_crash;
mod swarm;

mod support;
mod tls;
