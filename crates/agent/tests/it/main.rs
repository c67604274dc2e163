//! The agent's integration tests: one binary. `engine` runs the engine module against a real
//! `dockerd` ([`dockerd::Dockerd`]) started for the test (one engine for the whole binary);
//! `agent_loop` runs a real agent against a stand-in for the server ([`fake_server`]).

mod agent_loop;
mod dockerd;
mod engine;
mod fake_server;
