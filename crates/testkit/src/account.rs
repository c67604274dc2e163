//! A fresh AWS account in the shared moto with the two proxies every end-to-end test puts in
//! front of it: [`MotoAccount::proxy`], the one the server talks through (counted, faulted,
//! delayed by the test), and [`MotoAccount::inspector`], the one the test's own checks go
//! through (never counted, never faulted).
//!
//! Design decisions:
//! * One account per test: moto keeps accounts apart, so every resource the test finds in
//!   its account is its server's, and tests can run side by side on one moto.

use crate::{FaultProxy, Moto};

/// A fresh moto account and its two proxies.
#[derive(Debug)]
pub struct MotoAccount {
    pub id: String,
    /// The server's way to AWS.
    pub proxy: FaultProxy,
    /// The test's way to AWS for its checks.
    pub inspector: FaultProxy,
}

impl MotoAccount {
    /// A new account in the shared moto (started on first use) and both proxies.
    pub async fn start() -> MotoAccount {
        let moto = Moto::shared();
        let id = Moto::new_account_id();
        let proxy = FaultProxy::start(&moto.endpoint(), Some(id.clone())).await;
        let inspector = FaultProxy::start(&moto.endpoint(), Some(id.clone())).await;
        MotoAccount {
            id,
            proxy,
            inspector,
        }
    }

    /// An EC2 client of this account in `region`, through the inspector.
    pub async fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        crate::inspect::ec2_client(&self.inspector.endpoint(), region).await
    }
}
