//! Integration tests for the testkit, driving the proxy with the real AWS SDK
//! (as Flotilla does) against the shared moto server.
//!
//! One test binary so that moto starts once for all of them; each test gets
//! its own moto account through its proxy, so tests can run in parallel.

mod hosts;
mod moto;
mod proxy;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use flotilla_testkit::{FaultProxy, Moto};

/// An EC2 client for `endpoint` that never retries, so each SDK call is
/// exactly one proxied request.
pub fn ec2(endpoint: &str) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "AKIDTESTKIT",
            "secret",
            None,
            None,
            "testkit",
        ))
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// A proxy in front of the shared moto, isolated in a fresh account, and a
/// client talking through it.
pub async fn isolated() -> (FaultProxy, aws_sdk_ec2::Client) {
    let upstream = Moto::shared().endpoint();
    let proxy = FaultProxy::start(&upstream, Some(Moto::new_account_id())).await;
    let client = ec2(&proxy.endpoint());
    (proxy, client)
}
