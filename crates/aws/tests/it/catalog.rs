//! The catalogue (regions and instance type offerings) as moto reports it, and its cache.

use flotilla_core::cloud::Cloud;

use crate::harness::{Env, ZONES};

#[tokio::test]
async fn regions_are_sorted_and_asked_once() {
    let env = Env::new().await;
    let regions = env.aws.regions().await.expect("regions");
    assert!(regions.contains(&"us-east-1".to_owned()), "{regions:?}");
    assert!(regions.contains(&"eu-west-1".to_owned()), "{regions:?}");
    let mut sorted = regions.clone();
    sorted.sort();
    assert_eq!(regions, sorted);
    assert_eq!(env.aws.regions().await.expect("cached"), regions);
    assert_eq!(
        env.proxy.count("DescribeRegions"),
        1,
        "the second answer is cached"
    );
}

#[tokio::test]
async fn node_types_carry_their_zones_and_are_cached_per_region() {
    let env = Env::new().await;
    let types = env.aws.node_types("us-east-1").await.expect("node types");
    let micro = types
        .iter()
        .find(|t| t.name == "t3.micro")
        .expect("t3.micro is offered in us-east-1");
    for zone in ZONES {
        assert!(
            micro.availability_zones.iter().any(|z| z == zone),
            "{zone} missing from {:?}",
            micro.availability_zones
        );
    }
    let names: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    assert!(
        types.iter().all(|t| t
            .availability_zones
            .iter()
            .all(|z| z.starts_with("us-east-1"))),
        "only the region's own AZs"
    );
    let pages = env.proxy.count("DescribeInstanceTypeOfferings");
    assert!(pages >= 1);
    let again = env.aws.node_types("us-east-1").await.expect("cached");
    assert_eq!(again, types);
    assert_eq!(env.proxy.count("DescribeInstanceTypeOfferings"), pages);
    let other = env
        .aws
        .node_types("eu-west-1")
        .await
        .expect("another region");
    assert!(other.iter().any(|t| t.name == "t3.micro"));
    assert!(env.proxy.count("DescribeInstanceTypeOfferings") > pages);
}
