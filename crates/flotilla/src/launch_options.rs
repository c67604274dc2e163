//! The launch settings `flotilla engine up` and `flotilla server` share: where nodes may go,
//! what they boot, and who may reach them.

use clap::Args;
use flotilla_core::cloud::Ingress;

#[derive(Debug, Args)]
pub struct LaunchOptions {
    /// Restrict the auto network to these AZs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub azs: Vec<String>,
    /// Image to launch (default: the newest official Ubuntu image of the region).
    #[arg(long)]
    pub image_id: Option<String>,
    /// EC2 key pair for SSH into nodes.
    #[arg(long)]
    pub key_name: Option<String>,
    /// Networks allowed to reach the nodes' management ports (none by default).
    #[arg(long = "ingress-cidr")]
    pub ingress_cidrs: Vec<String>,
    /// Management ports opened to `--ingress-cidr`: SSH and the client bundles' Docker API
    /// proxy on swarm managers.
    #[arg(long = "ingress-port", default_values_t = vec![22u16, flotilla_core::docker_access::DOCKER_PROXY_PORT])]
    pub ingress_ports: Vec<u16>,
}

impl LaunchOptions {
    /// `None` means every AZ of the region.
    pub fn allowed_azs(&self) -> Option<Vec<String>> {
        (!self.azs.is_empty()).then(|| self.azs.clone())
    }

    pub fn ingress(&self) -> Ingress {
        Ingress {
            ports: self.ingress_ports.clone(),
            cidrs: self.ingress_cidrs.clone(),
        }
    }
}
