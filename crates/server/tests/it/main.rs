//! Integration tests of the control plane through its public HTTP API: a real server on
//! port 0 driven by a real HTTP client, against `FakeCloud` for the contract (fast) and
//! against the AWS engine on moto for the end-to-end lifecycle and crash recovery.

mod access;
mod agents;
mod contract;
mod dns;
mod fuzz;
mod harness;
mod invariants;
mod ldap;
mod lifecycle;
mod link;
mod security;
mod stream;
mod swarms;
