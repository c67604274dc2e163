//! Auto networking (find-or-create by tag, dry-run before each subnet, repeat and resume) and
//! the user's own VPC (validation that names the bad id, dc-subnets in an empty VPC).

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use flotilla_core::cloud::{Cloud, Ingress, NetworkRequest};
use flotilla_core::spec::VpcOptions;
use flotilla_core::{CloudError, ClusterSpec};
use flotilla_testkit::{Fault, Rule};

use crate::harness::{Env, ZONES, network_request, spec};

fn creates(env: &Env) -> usize {
    env.proxy
        .calls()
        .iter()
        .filter(|c| c.action.starts_with("Create"))
        .count()
}

#[tokio::test]
async fn the_auto_network_is_dockers_layout_with_tags_and_is_created_once() {
    let env = Env::new().await;
    let spec = spec(0);
    let request = network_request(&spec);
    let network = env.aws.ensure_network(&request).await.expect("network");
    assert!(network.managed);
    assert_eq!(network.vpc_cidr.to_string(), "10.78.0.0/16");
    let layout: Vec<(String, String)> = network
        .subnets
        .iter()
        .map(|s| (s.availability_zone.clone(), s.cidr.clone()))
        .collect();
    // us-east-1 has 6 AZs in moto: 8 blocks of /19, each AZ keeps its block.
    assert_eq!(
        layout,
        vec![
            ("us-east-1a".into(), "10.78.0.0/19".into()),
            ("us-east-1b".into(), "10.78.32.0/19".into()),
            ("us-east-1c".into(), "10.78.64.0/19".into()),
        ]
    );
    assert_eq!(env.owned("us-east-1", "vpc").await.len(), 1);
    assert_eq!(env.owned("us-east-1", "subnet").await.len(), 3);
    assert_eq!(env.owned("us-east-1", "internet-gateway").await.len(), 1);
    assert_eq!(env.owned("us-east-1", "route-table").await.len(), 1);
    assert_eq!(env.owned("us-east-1", "security-group").await.len(), 1);

    // Names, the gateway route, the associations, the rules.
    let ec2 = env.ec2("us-east-1").await;
    let vpc = ec2
        .describe_vpcs()
        .vpc_ids(&network.vpc_id)
        .send()
        .await
        .expect("vpc");
    let name = vpc.vpcs()[0]
        .tags()
        .iter()
        .find(|t| t.key() == Some("Name"))
        .and_then(|t| t.value());
    assert_eq!(name, Some("dc-vpc"));
    let tables = ec2
        .describe_route_tables()
        .filters(
            Filter::builder()
                .name("tag:Name")
                .values("dc-route-table")
                .build(),
        )
        .send()
        .await
        .expect("tables");
    let table = &tables.route_tables()[0];
    assert!(
        table
            .routes()
            .iter()
            .any(|r| r.destination_cidr_block() == Some("0.0.0.0/0")
                && r.gateway_id().is_some_and(|g| g.starts_with("igw-")))
    );
    assert_eq!(
        table
            .associations()
            .iter()
            .filter(|a| a.subnet_id().is_some())
            .count(),
        3
    );
    let groups = ec2
        .describe_security_groups()
        .group_ids(&network.security_groups[0])
        .send()
        .await
        .expect("sg");
    let cidrs: Vec<&str> = groups.security_groups()[0]
        .ip_permissions()
        .iter()
        .flat_map(|p| p.ip_ranges())
        .filter_map(|r| r.cidr_ip())
        .collect();
    assert_eq!(
        cidrs,
        vec!["10.78.0.0/16"],
        "only the VPC itself by default: no 0.0.0.0/0"
    );

    // A dry run preceded every subnet.
    let calls = env.proxy.calls();
    let dry_runs = calls
        .iter()
        .filter(|c| {
            c.action == "RunInstances" && c.params.iter().any(|(k, v)| k == "DryRun" && v == "true")
        })
        .count();
    assert_eq!(dry_runs, 3);
    let first_subnet = calls
        .iter()
        .position(|c| c.action == "CreateSubnet")
        .expect("subnets created");
    let last_dry_run = calls
        .iter()
        .rposition(|c| c.action == "RunInstances")
        .expect("dry runs");
    assert!(last_dry_run < first_subnet, "dry runs come before subnets");

    // Running it again creates nothing.
    env.proxy.clear_log();
    let again = env.aws.ensure_network(&request).await.expect("again");
    assert_eq!(creates(&env), 0, "{:?}", env.proxy.counts_by_action());
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert_eq!(again.subnets, network.subnets);
}

#[tokio::test]
async fn an_interrupted_run_is_finished_by_the_next_without_duplicates() {
    // Fail the K-th call for every K of the first run, then run again: one of everything.
    let probe = Env::new().await;
    let spec = spec(0);
    let request = network_request(&spec);
    probe.aws.ensure_network(&request).await.expect("network");
    let total = probe.proxy.total() as u64;
    assert!(total >= 15, "a full run makes {total} calls");
    for k in 1..=total {
        let env = Env::new().await;
        env.proxy.add_rule(Rule::any().nth(k).fault(Fault::Error {
            status: 400,
            code: "Blocked".into(),
            message: format!("injected failure of call {k}"),
        }));
        let first = env.aws.ensure_network(&request).await;
        assert!(first.is_err(), "k={k}: the injected failure stops the run");
        let network = env
            .aws
            .ensure_network(&request)
            .await
            .unwrap_or_else(|e| panic!("k={k}: resume failed: {e}"));
        let subnets = env.owned("us-east-1", "subnet").await.len();
        assert_eq!(env.owned("us-east-1", "vpc").await.len(), 1, "k={k}");
        assert_eq!(
            env.owned("us-east-1", "internet-gateway").await.len(),
            1,
            "k={k}"
        );
        assert_eq!(
            env.owned("us-east-1", "route-table").await.len(),
            1,
            "k={k}"
        );
        assert_eq!(
            env.owned("us-east-1", "security-group").await.len(),
            1,
            "k={k}"
        );
        assert_eq!(subnets, 3, "k={k}");
        assert_eq!(network.subnets.len(), 3, "k={k}: {:?}", network.skipped_azs);
    }
}

#[tokio::test]
async fn an_az_whose_dry_run_fails_gets_no_subnet_and_the_reason_is_reported() {
    let env = Env::new().await;
    env.proxy.add_rule(
        Rule::action("RunInstances")
            .only_dry_run()
            .in_az("us-east-1b")
            .fault(Fault::Unsupported),
    );
    let spec = spec(0);
    let network = env
        .aws
        .ensure_network(&network_request(&spec))
        .await
        .expect("network");
    let zones: Vec<&str> = network
        .subnets
        .iter()
        .map(|s| s.availability_zone.as_str())
        .collect();
    assert_eq!(zones, vec!["us-east-1a", "us-east-1c"]);
    assert_eq!(network.skipped_azs.len(), 1);
    assert_eq!(network.skipped_azs[0].availability_zone, "us-east-1b");
    assert!(
        network.skipped_azs[0].reason.contains("Unsupported"),
        "{}",
        network.skipped_azs[0].reason
    );
    // When the AZ recovers, the next run fills the gap with the AZ's own block.
    env.proxy.clear_rules();
    let network = env
        .aws
        .ensure_network(&network_request(&spec))
        .await
        .expect("network");
    let b = network
        .subnets
        .iter()
        .find(|s| s.availability_zone == "us-east-1b")
        .expect("b now");
    assert_eq!(b.cidr, "10.78.32.0/19");
}

#[tokio::test]
async fn ingress_opens_management_ports_only_to_configured_networks() {
    let env = Env::new().await;
    let spec = spec(0);
    let mut request = network_request(&spec);
    request.ingress = Ingress {
        ports: vec![22, 2376],
        cidrs: vec!["203.0.113.0/24".into()],
    };
    let network = env.aws.ensure_network(&request).await.expect("network");
    let ec2 = env.ec2("us-east-1").await;
    let groups = ec2
        .describe_security_groups()
        .group_ids(&network.security_groups[0])
        .send()
        .await
        .expect("sg");
    let mut rules: Vec<String> = groups.security_groups()[0]
        .ip_permissions()
        .iter()
        .flat_map(|p| {
            p.ip_ranges().iter().map(move |r| {
                format!(
                    "{}:{}:{}",
                    p.ip_protocol().unwrap_or("?"),
                    p.from_port().unwrap_or(-1),
                    r.cidr_ip().unwrap_or("?")
                )
            })
        })
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        vec![
            "-1:-1:10.78.0.0/16",
            "tcp:22:203.0.113.0/24",
            "tcp:2376:203.0.113.0/24"
        ]
    );
}

async fn user_vpc(env: &Env, cidr: &str) -> String {
    let ec2 = env.ec2("us-east-1").await;
    let vpc = ec2.create_vpc().cidr_block(cidr).send().await.expect("vpc");
    vpc.vpc().and_then(|v| v.vpc_id()).expect("id").to_owned()
}

async fn user_subnet(env: &Env, vpc: &str, cidr: &str, zone: &str) -> String {
    let ec2 = env.ec2("us-east-1").await;
    let subnet = ec2
        .create_subnet()
        .vpc_id(vpc)
        .cidr_block(cidr)
        .availability_zone(zone)
        .send()
        .await
        .expect("subnet");
    subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("id")
        .to_owned()
}

fn byo_request(vpc: VpcOptions, profile: Option<&str>) -> NetworkRequest {
    let mut body =
        serde_json::json!({"name": "byo", "region": "us-east-1", "node_type": "t3.micro"});
    body["provider_options"] = serde_json::json!({"vpc": vpc});
    if let Some(profile) = profile {
        body["provider_options"]["iam"] = serde_json::json!({"instance_profile_name": profile});
    }
    let spec = ClusterSpec::from_json(&body).expect("valid spec");
    NetworkRequest::for_spec(
        &spec,
        None,
        Some(ZONES.iter().map(|z| (*z).to_owned()).collect()),
        Ingress::default(),
    )
}

fn field_of(error: CloudError) -> (String, String) {
    match error {
        CloudError::InvalidResource { field, message } => (field, message),
        other => panic!("expected an invalid resource error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_user_vpc_is_validated_and_every_bad_id_is_named() {
    let env = Env::new().await;
    let vpc = user_vpc(&env, "172.31.0.0/16").await;
    let other = user_vpc(&env, "172.30.0.0/16").await;
    let subnet = user_subnet(&env, &vpc, "172.31.0.0/24", "us-east-1a").await;
    let foreign = user_subnet(&env, &other, "172.30.0.0/24", "us-east-1a").await;
    let options = |subnets: Vec<String>, groups: Vec<String>| VpcOptions {
        id: vpc.clone(),
        subnets,
        security_groups: groups,
    };

    let missing_vpc = VpcOptions {
        id: "vpc-0123456789abcdef0".into(),
        subnets: vec![],
        security_groups: vec![],
    };
    let (field, message) = field_of(
        env.aws
            .ensure_network(&byo_request(missing_vpc, None))
            .await
            .expect_err("no vpc"),
    );
    assert_eq!(field, "provider_options.vpc.id");
    assert!(
        message.contains("vpc-0123456789abcdef0 does not exist"),
        "{message}"
    );

    let (field, message) = field_of(
        env.aws
            .ensure_network(&byo_request(options(vec![foreign.clone()], vec![]), None))
            .await
            .expect_err("foreign"),
    );
    assert_eq!(field, "provider_options.vpc.subnets");
    assert!(
        message.contains(&foreign) && message.contains(&other),
        "{message}"
    );

    let (field, message) = field_of(
        env.aws
            .ensure_network(&byo_request(
                options(vec!["subnet-0123456789abcdef0".into()], vec![]),
                None,
            ))
            .await
            .expect_err("missing"),
    );
    assert_eq!(field, "provider_options.vpc.subnets");
    assert!(
        message.contains("subnet-0123456789abcdef0 does not exist"),
        "{message}"
    );

    let (field, message) = field_of(
        env.aws
            .ensure_network(&byo_request(
                options(vec![subnet.clone()], vec!["sg-0123456789abcdef0".into()]),
                None,
            ))
            .await
            .expect_err("sg"),
    );
    assert_eq!(field, "provider_options.vpc.security_groups");
    assert!(message.contains("sg-0123456789abcdef0"), "{message}");

    let (field, message) = field_of(
        env.aws
            .ensure_network(&byo_request(
                options(vec![subnet.clone()], vec![]),
                Some("no-such-profile"),
            ))
            .await
            .expect_err("profile"),
    );
    assert_eq!(field, "provider_options.iam.instance_profile_name");
    assert!(message.contains("no-such-profile"), "{message}");

    let (field, message) = field_of(
        env.aws
            .ensure_network(&byo_request(options(vec![], vec![]), None))
            .await
            .expect_err("unchosen subnets"),
    );
    assert_eq!(field, "provider_options.vpc.subnets");
    assert!(message.contains(&subnet), "{message}");

    // And the good case: the chosen subnet, a Flotilla security group in the user's VPC.
    let iam = env.iam().await;
    iam.create_instance_profile()
        .instance_profile_name("nodes")
        .send()
        .await
        .expect("profile");
    let network = env
        .aws
        .ensure_network(&byo_request(
            options(vec![subnet.clone()], vec![]),
            Some("nodes"),
        ))
        .await
        .expect("ok");
    assert!(!network.managed);
    assert_eq!(network.subnets.len(), 1);
    assert_eq!(network.subnets[0].id, subnet);
    assert!(!network.subnets[0].managed);
    assert_eq!(
        env.owned("us-east-1", "vpc").await.len(),
        0,
        "the user's VPC is not tagged"
    );
}

#[tokio::test]
async fn an_empty_user_vpc_gets_dc_subnets_planned_in_its_own_cidr() {
    let env = Env::new().await;
    let vpc = user_vpc(&env, "192.168.0.0/16").await;
    let options = VpcOptions {
        id: vpc.clone(),
        subnets: vec![],
        security_groups: vec![],
    };
    let network = env
        .aws
        .ensure_network(&byo_request(options.clone(), None))
        .await
        .expect("network");
    let cidrs: Vec<&str> = network.subnets.iter().map(|s| s.cidr.as_str()).collect();
    assert_eq!(
        cidrs,
        vec!["192.168.0.0/19", "192.168.32.0/19", "192.168.64.0/19"]
    );
    assert!(network.subnets.iter().all(|s| s.managed));
    // Again: the subnets are found by tag, not created twice.
    let again = env
        .aws
        .ensure_network(&byo_request(options, None))
        .await
        .expect("again");
    assert_eq!(again.subnets, network.subnets);
    assert_eq!(env.owned("us-east-1", "subnet").await.len(), 3);
}

#[tokio::test]
async fn chosen_user_security_groups_must_belong_to_the_vpc() {
    let env = Env::new().await;
    let vpc = user_vpc(&env, "172.31.0.0/16").await;
    let other = user_vpc(&env, "172.30.0.0/16").await;
    let subnet = user_subnet(&env, &vpc, "172.31.0.0/24", "us-east-1a").await;
    let ec2 = env.ec2("us-east-1").await;
    let group = ec2
        .create_security_group()
        .group_name("elsewhere")
        .description("d")
        .vpc_id(&other)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::SecurityGroup)
                .tags(Tag::builder().key("team").value("x").build())
                .build(),
        )
        .send()
        .await
        .expect("sg");
    let id = group.group_id().expect("id").to_owned();
    let options = VpcOptions {
        id: vpc.clone(),
        subnets: vec![subnet],
        security_groups: vec![id.clone()],
    };
    let (field, message) = field_of(
        env.aws
            .ensure_network(&byo_request(options, None))
            .await
            .expect_err("wrong vpc"),
    );
    assert_eq!(field, "provider_options.vpc.security_groups");
    assert!(
        message.contains(&id) && message.contains(&other),
        "{message}"
    );
}

#[tokio::test]
async fn duplicates_left_by_a_crashed_run_are_removed_when_unused() {
    let env = Env::new().await;
    let spec = spec(0);
    let request = network_request(&spec);
    let network = env.aws.ensure_network(&request).await.expect("network");
    // What a create that was still in flight during a crash leaves behind: a second gateway,
    // route table and subnet, all with our tags.
    let ec2 = env.ec2("us-east-1").await;
    let tags = |kind: ResourceType| {
        TagSpecification::builder()
            .resource_type(kind)
            .tags(
                Tag::builder()
                    .key("flotilla:owner")
                    .value(crate::harness::OWNER)
                    .build(),
            )
            .build()
    };
    ec2.create_internet_gateway()
        .tag_specifications(tags(ResourceType::InternetGateway))
        .send()
        .await
        .expect("igw");
    ec2.create_route_table()
        .vpc_id(&network.vpc_id)
        .tag_specifications(tags(ResourceType::RouteTable))
        .send()
        .await
        .expect("rtb");
    ec2.create_subnet()
        .vpc_id(&network.vpc_id)
        .cidr_block("10.78.224.0/20")
        .availability_zone("us-east-1a")
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Subnet)
                .tags(
                    Tag::builder()
                        .key("flotilla:owner")
                        .value(crate::harness::OWNER)
                        .build(),
                )
                .tags(Tag::builder().key("Name").value("dc-subnet").build())
                .build(),
        )
        .send()
        .await
        .expect("subnet");
    assert_eq!(env.owned("us-east-1", "internet-gateway").await.len(), 2);

    let again = env.aws.ensure_network(&request).await.expect("again");
    let removed: Vec<&String> = again
        .changes
        .iter()
        .filter(|c| c.starts_with("removed duplicate"))
        .collect();
    assert_eq!(removed.len(), 3, "{:?}", again.changes);
    assert_eq!(env.owned("us-east-1", "internet-gateway").await.len(), 1);
    assert_eq!(env.owned("us-east-1", "route-table").await.len(), 1);
    assert_eq!(env.owned("us-east-1", "subnet").await.len(), 3);
    assert_eq!(
        again.subnets, network.subnets,
        "the kept subnets are the ones in use"
    );
}

/// Every ingress rule of the cluster's security group as `protocol:port:cidr`, IPv4 and
/// IPv6.
async fn ingress_rules(env: &Env, group: &str) -> Vec<String> {
    let ec2 = env.ec2("us-east-1").await;
    let groups = ec2
        .describe_security_groups()
        .group_ids(group)
        .send()
        .await
        .expect("sg");
    let mut rules: Vec<String> = groups.security_groups()[0]
        .ip_permissions()
        .iter()
        .flat_map(|p| {
            let rule = |cidr: &str| {
                format!(
                    "{}:{}:{cidr}",
                    p.ip_protocol().unwrap_or("?"),
                    p.from_port().unwrap_or(-1)
                )
            };
            p.ip_ranges()
                .iter()
                .map(|r| rule(r.cidr_ip().unwrap_or("?")))
                .chain(
                    p.ipv6_ranges()
                        .iter()
                        .map(|r| rule(r.cidr_ipv6().unwrap_or("?"))),
                )
                .collect::<Vec<_>>()
        })
        .collect();
    rules.sort();
    rules
}

#[tokio::test]
async fn the_world_is_let_in_only_when_asked_and_only_on_management_ports() {
    // Management ports configured but no network: nothing from outside the VPC, on any
    // port, over IPv4 or IPv6.
    let env = Env::new().await;
    let spec = spec(0);
    let mut request = network_request(&spec);
    request.ingress = Ingress {
        ports: vec![22, 2376],
        cidrs: Vec::new(),
    };
    let network = env.aws.ensure_network(&request).await.expect("network");
    let rules = ingress_rules(&env, &network.security_groups[0]).await;
    assert_eq!(rules, vec!["-1:-1:10.78.0.0/16"], "only the VPC itself");

    // 0.0.0.0/0 when explicitly asked: then on the management ports only, never all ports.
    let env = Env::new().await;
    let mut request = network_request(&spec);
    request.ingress = Ingress {
        ports: vec![22, 2376],
        cidrs: vec!["0.0.0.0/0".into()],
    };
    let network = env.aws.ensure_network(&request).await.expect("network");
    let rules = ingress_rules(&env, &network.security_groups[0]).await;
    assert_eq!(
        rules,
        vec![
            "-1:-1:10.78.0.0/16",
            "tcp:22:0.0.0.0/0",
            "tcp:2376:0.0.0.0/0"
        ]
    );
}

/// The launch wizard's lists (`Cloud::network_inventory`, `Cloud::instance_profiles`):
/// the user's VPC with its Name tag, its subnets with AZ and free addresses, its security
/// group; Flotilla's own network marked as such once it exists; the account's instance
/// profiles; and the network epoch moving when (and only when) the network changed.
#[tokio::test]
async fn the_wizards_inventory_lists_the_users_network_and_flotillas_own() {
    let env = Env::new().await;
    let ec2 = env.ec2("us-east-1").await;
    let (vpc, subnets) = flotilla_testkit::inspect::create_user_vpc(
        &ec2,
        "10.20.0.0/16",
        &[
            ("10.20.1.0/24", "us-east-1a"),
            ("10.20.2.0/24", "us-east-1b"),
        ],
    )
    .await;
    flotilla_testkit::inspect::name_resource(&ec2, &vpc, "team-vpc").await;
    let group = flotilla_testkit::inspect::create_security_group(&ec2, &vpc, "team-sg").await;
    flotilla_testkit::inspect::create_instance_profile(&env.inspect.endpoint(), "team-role").await;

    let before = env.aws.network_epoch("us-east-1");
    let inventory = env
        .aws
        .network_inventory("us-east-1")
        .await
        .expect("inventory");
    let theirs = inventory
        .vpcs
        .iter()
        .find(|v| v.id == vpc)
        .unwrap_or_else(|| panic!("the user's VPC listed: {inventory:#?}"));
    assert_eq!(theirs.name.as_deref(), Some("team-vpc"));
    assert_eq!(theirs.cidr, "10.20.0.0/16");
    assert!(!theirs.managed && !theirs.is_default);
    assert!(
        inventory.vpcs.iter().any(|v| v.is_default),
        "moto's default VPC"
    );
    assert!(
        inventory.vpcs.iter().all(|v| !v.managed),
        "no network of ours yet"
    );
    let listed: Vec<(&str, &str, u32)> = inventory
        .subnets
        .iter()
        .filter(|s| s.vpc_id == vpc)
        .map(|s| (s.id.as_str(), s.availability_zone.as_str(), s.available_ips))
        .collect();
    // A /24 has 256 addresses; AWS keeps 5 of each subnet.
    assert_eq!(
        listed,
        vec![
            (subnets[0].as_str(), "us-east-1a", 251),
            (subnets[1].as_str(), "us-east-1b", 251)
        ]
    );
    assert!(
        inventory
            .security_groups
            .iter()
            .any(|g| g.id == group && g.vpc_id == vpc && g.name == "team-sg" && !g.managed),
        "{:#?}",
        inventory.security_groups
    );
    let profiles = env.aws.instance_profiles().await.expect("profiles");
    assert!(
        profiles
            .iter()
            .any(|p| p.name == "team-role" && p.arn.ends_with(":instance-profile/team-role")),
        "{profiles:#?}"
    );
    assert_eq!(
        env.aws.network_epoch("us-east-1"),
        before,
        "describing changes nothing"
    );

    // Flotilla's auto network: listed as ours, and the epoch moved with it.
    let network = env
        .aws
        .ensure_network(&network_request(&spec(0)))
        .await
        .expect("network");
    let created = env.aws.network_epoch("us-east-1");
    assert!(created > before, "an ensure that created moves the epoch");
    env.aws
        .ensure_network(&network_request(&spec(0)))
        .await
        .expect("network again");
    assert_eq!(
        env.aws.network_epoch("us-east-1"),
        created,
        "an ensure that found everything in place does not"
    );
    let inventory = env
        .aws
        .network_inventory("us-east-1")
        .await
        .expect("inventory");
    let ours: Vec<_> = inventory.vpcs.iter().filter(|v| v.managed).collect();
    assert_eq!(ours.len(), 1, "{inventory:#?}");
    assert_eq!(ours[0].id, network.vpc_id);
    assert_eq!(ours[0].name.as_deref(), Some("dc-vpc"));
    let our_subnets = inventory.subnets.iter().filter(|s| s.managed).count();
    assert_eq!(our_subnets, network.subnets.len());
    assert!(
        inventory
            .security_groups
            .iter()
            .any(|g| g.managed && g.vpc_id == network.vpc_id),
        "our node security group: {:#?}",
        inventory.security_groups
    );
}
