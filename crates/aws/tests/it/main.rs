//! Integration tests of the AWS engine against moto, through the testkit's fault proxy.
//!
//! Each test gets its own moto account (the proxy sets `x-moto-account-id`), so tests run in
//! parallel on one moto server without seeing each other's resources.

mod catalog;
mod credentials;
mod harness;
mod instances;
mod lb;
mod network;
mod route53;
mod teardown;
