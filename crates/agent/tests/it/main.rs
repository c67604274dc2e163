//! The agent's integration tests: one binary. `engine` runs the engine module against a real
//! `dockerd` ([`dockerd::Dockerd`]) started for the test.

mod dockerd;
mod engine;
