//! End-to-end tests of the `flotilla` binary as a user runs it, against moto through the
//! testkit proxy (one moto account per test).

mod agents;
mod client;
mod dockercloud_cli;
mod engine;
mod link;
mod server_crash;
mod support;
