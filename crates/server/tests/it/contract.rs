//! The API contract (shared/design/dockercloud-api.md) against `FakeCloud`: paths, status
//! codes, envelopes, dates, filters, errors, and the cluster lifecycle as the API shows it.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::date;
use flotilla_api::uri;
use flotilla_core::fake::FakeCloud;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestServer, config};

const LIMIT: Duration = Duration::from_secs(20);

async fn server() -> (TestServer, Arc<FakeCloud>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cloud = Arc::new(FakeCloud::new());
    let server = TestServer::start(config(&dir), cloud.clone(), None).await;
    (server, cloud, dir)
}

fn create_body(name: &str, target: u32) -> Value {
    json!({"name": name, "target_num_nodes": target, "region": "/api/infra/v1/region/aws/us-east-1/",
           "node_type": "/api/infra/v1/nodetype/aws/t3.micro/", "disk": "60", "tags": [{"name": "web"}]})
}

async fn create(server: &TestServer, name: &str, target: u32) -> String {
    let reply = server
        .call(
            Method::POST,
            &uri::node_clusters(),
            Some(create_body(name, target)),
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.body["uuid"].as_str().expect("uuid").to_owned()
}

/// `/_ping` says only whether the server is healthy; `/readyz` gives an authenticated
/// caller each check behind it (the database write, every background loop) with its detail.
#[tokio::test]
async fn readyz_details_every_check_behind_ping() {
    let (server, _, _dir) = server().await;
    assert_eq!(
        server.raw(Method::GET, uri::PING, None, None).await.status,
        200
    );
    assert_eq!(
        server
            .raw(Method::GET, uri::READYZ, None, None)
            .await
            .status,
        401,
        "the detail is for an authenticated caller"
    );
    let reply = server.get(uri::READYZ).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["ready"], true, "{:?}", reply.body);
    let checks = reply.body["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "database",
            "leases",
            "reconcilers loop",
            "node health loop",
            "swarm worker loop"
        ],
        "{checks:?}"
    );
    for check in checks {
        assert_eq!(check["ok"], true, "{check}");
        assert!(
            !check["detail"].as_str().unwrap_or("").is_empty(),
            "{check}"
        );
    }
}

#[tokio::test]
async fn authentication_is_required_everywhere_but_ping() {
    let (server, _, _dir) = server().await;
    for path in ["/_ping", "/_ping/"] {
        let reply = server.raw(Method::GET, path, None, None).await;
        assert_eq!(reply.status, 200);
    }
    let user = server.credentials.username.clone();
    for auth in [
        None,
        Some((user.as_str(), "wrong-key")),
        Some(("nobody", "x")),
    ] {
        for path in [
            "/api/infra/v1/nodecluster/",
            "/api/audit/v1/action/",
            "/api/nothing/",
            "/api/openapi.json",
        ] {
            let reply = server.raw(Method::GET, path, None, auth).await;
            assert_eq!(reply.status, 401, "{path}");
            assert_eq!(reply.body, json!({"error": "Not authorized"}));
        }
    }
    assert_eq!(server.get(&uri::node_clusters()).await.status, 200);
    // The OpenAPI document is served with auth, like the API it describes.
    let document = server.get("/api/openapi.json").await;
    assert_eq!(document.status, 200);
    assert!(
        document.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    assert!(document.body["paths"]["/api/infra/v1/nodecluster/"]["post"].is_object());
    server.stop().await;
}

#[tokio::test]
async fn the_catalogue_comes_from_the_cloud_in_the_documented_shapes() {
    let (server, cloud, _dir) = server().await;
    let providers = server.get("/api/infra/v1/provider/").await;
    assert_eq!(providers.status, 200);
    assert_eq!(providers.body["meta"]["total_count"], 1);
    assert_eq!(providers.body["objects"][0]["name"], "aws");
    assert_eq!(
        providers.body["objects"][0]["resource_uri"],
        "/api/infra/v1/provider/aws/"
    );
    let regions = server.get("/api/infra/v1/region/").await.body;
    let names: Vec<&str> = regions["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, vec!["eu-west-1", "us-east-1"]);
    let region = server.get("/api/infra/v1/region/aws/us-east-1").await;
    assert_eq!(region.status, 200);
    assert_eq!(region.body["provider"], "/api/infra/v1/provider/aws/");
    assert!(
        region.body["node_types"]
            .as_array()
            .expect("node types")
            .contains(&json!("/api/infra/v1/nodetype/aws/t3.micro/"))
    );
    let azs = server
        .get("/api/infra/v1/az/?region=/api/infra/v1/region/aws/us-east-1/")
        .await
        .body;
    assert_eq!(azs["meta"]["total_count"], 6);
    assert_eq!(
        azs["objects"][0]["resource_uri"],
        "/api/infra/v1/az/aws/us-east-1/us-east-1a/"
    );
    let az = server
        .get("/api/infra/v1/az/aws/us-east-1/us-east-1b/")
        .await;
    assert_eq!(az.body["region"], "/api/infra/v1/region/aws/us-east-1/");
    let node_type = server
        .get("/api/infra/v1/nodetype/aws/m5.large/")
        .await
        .body;
    assert_eq!(node_type["regions"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        node_type["availability_zones"].as_array().map(Vec::len),
        Some(10),
        "5 AZs in each of 2 regions"
    );
    assert_eq!(
        server
            .get("/api/infra/v1/nodetype/aws/z9.huge/")
            .await
            .status,
        404
    );
    assert_eq!(
        server.get("/api/infra/v1/region/aws/mars-1/").await.status,
        404
    );
    // Listing again does not ask the cloud again.
    let asked = cloud.calls("regions");
    server.get("/api/infra/v1/region/").await;
    server.get("/api/infra/v1/nodetype/").await;
    assert_eq!(cloud.calls("regions"), asked);
    server.stop().await;
}

#[tokio::test]
async fn create_returns_201_init_and_a_finished_action() {
    let (server, _, _dir) = server().await;
    let reply = server
        .call(
            Method::POST,
            "/api/infra/v1/nodecluster",
            Some(create_body("web", 3)),
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let cluster = &reply.body;
    assert_eq!(cluster["state"], "Init");
    assert_eq!(cluster["disk"], 60);
    assert_eq!(cluster["nickname"], "web");
    assert_eq!(cluster["target_num_nodes"], 3);
    assert_eq!(cluster["current_num_nodes"], 0);
    assert_eq!(cluster["deployed_datetime"], Value::Null);
    assert_eq!(cluster["region"], "/api/infra/v1/region/aws/us-east-1/");
    assert_eq!(cluster["node_type"], "/api/infra/v1/nodetype/aws/t3.micro/");
    assert_eq!(cluster["tags"], json!([{"name": "web"}]));
    let uuid = cluster["uuid"].as_str().expect("uuid");
    assert!(flotilla_api::uri::is_uuid4(uuid), "{uuid}");
    assert_eq!(cluster["resource_uri"], uri::node_cluster(uuid));
    let action_uri = reply.action_uri.expect("action header");
    let action = server.get(&action_uri).await.body;
    assert_eq!(action["state"], "Success");
    assert_eq!(action["action"], "Node Cluster Create");
    assert_eq!(action["object"], uri::node_cluster(uuid));
    assert_eq!(action["method"], "POST");
    assert_eq!(action["user_agent"], "python-dockercloud/1.0.12");
    assert_eq!(action["ip"], "127.0.0.1");
    let start = action["start_date"].as_str().expect("start date");
    date::parse(start).expect("RFC 2822 date");
    assert!(start.ends_with(" +0000"));
    // The same object under the namespaced path and without the trailing slash.
    let user = server.credentials.username.clone();
    for path in [
        format!("/api/infra/v1/{user}/nodecluster/{uuid}/"),
        format!("/api/infra/v1/nodecluster/{uuid}"),
    ] {
        let again = server.get(&path).await;
        assert_eq!(again.status, 200, "{path}");
        assert_eq!(again.body["uuid"], uuid);
    }
    assert_eq!(
        server
            .get(&format!("/api/infra/v1/someoneelse/nodecluster/{uuid}/"))
            .await
            .status,
        404
    );
    server.stop().await;
}

#[tokio::test]
async fn provider_options_are_checked_against_the_cloud_at_create() {
    let (server, cloud, _dir) = server().await;
    cloud.add_user_vpc("vpc-0000000a", &["subnet-0000000a"], &["sg-0000000a"]);
    cloud.add_instance_profile("nodes");
    let with = |options: Value| {
        let mut body = create_body("own", 1);
        body["provider_options"] = options;
        body
    };
    for (options, needle) in [
        (
            json!({"vpc": {"id": "vpc-0000000b"}}),
            "provider_options.vpc.id: VPC vpc-0000000b",
        ),
        (
            json!({"vpc": {"id": "vpc-0000000a", "subnets": ["subnet-0000000b"]}}),
            "provider_options.vpc.subnets: subnet subnet-0000000b",
        ),
        (
            json!({"vpc": {"id": "vpc-0000000a", "security_groups": ["sg-0000000b"]}}),
            "provider_options.vpc.security_groups: security group sg-0000000b",
        ),
        (
            json!({"iam": {"instance_profile_name": "other"}}),
            "provider_options.iam.instance_profile_name: instance profile 'other'",
        ),
    ] {
        let reply = server
            .call(
                Method::POST,
                "/api/infra/v1/nodecluster/",
                Some(with(options.clone())),
            )
            .await;
        assert_eq!(reply.status, 400, "{options}: {:?}", reply.body);
        let error = reply.body["error"].as_str().expect("error message");
        assert!(error.contains(needle), "{needle} not in {error}");
    }
    let listed = server.get("/api/infra/v1/nodecluster/").await.body;
    assert_eq!(
        listed["meta"]["total_count"], 0,
        "nothing stored: {listed:#}"
    );
    let good = with(
        json!({"vpc": {"id": "vpc-0000000a", "subnets": ["subnet-0000000a"],
        "security_groups": ["sg-0000000a"]}, "iam": {"instance_profile_name": "nodes"}}),
    );
    let created = server
        .call(Method::POST, "/api/infra/v1/nodecluster/", Some(good))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(cloud.calls("check_network"), 5);
    create(&server, "auto", 1).await;
    assert_eq!(cloud.calls("check_network"), 5, "nothing to check");
    server.stop().await;
}

#[tokio::test]
async fn the_openapi_document_accepts_what_the_server_accepts() {
    let (server, _, _dir) = server().await;
    let document = server.get("/api/openapi.json").await.body;
    let schemas = &document["components"]["schemas"];
    let bounds = |schema: &Value| {
        (
            schema["minimum"].as_i64().expect("minimum"),
            schema["maximum"].as_i64().expect("maximum"),
        )
    };
    let post = |body: Value| async {
        server
            .call(Method::POST, "/api/infra/v1/nodecluster/", Some(body))
            .await
            .status
    };

    // Create: the bounds of target_num_nodes and disk are exactly the server's.
    let create_schema = &schemas["NodeClusterCreate"]["properties"];
    let (low, high) = bounds(&create_schema["target_num_nodes"]);
    assert_eq!(low, 0, "a cluster may be created empty");
    for (n, status) in [(low, 201), (high, 201), (high + 1, 400)] {
        let mut body = create_body(&format!("target-{n}"), 0);
        body["target_num_nodes"] = json!(n);
        assert_eq!(post(body).await, status, "target_num_nodes {n}");
    }
    let (low, high) = bounds(&create_schema["disk"]);
    for (n, status) in [(low - 1, 400), (low, 201), (high, 201), (high + 1, 400)] {
        let mut body = create_body(&format!("disk-{n}"), 1);
        body["disk"] = json!(n.to_string());
        assert_eq!(post(body).await, status, "disk {n}");
    }
    assert_eq!(create_schema["auto_replace"]["type"], "boolean");

    // PATCH: every field the document names is accepted, nothing else.
    let patch = &schemas["NodeClusterPatch"];
    assert_eq!(patch["additionalProperties"], false);
    let fields: Vec<&str> = patch["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = flotilla_server::CLUSTER_PATCH_FIELDS.to_vec();
    expected.sort_unstable();
    let mut named = fields.clone();
    named.sort_unstable();
    assert_eq!(named, expected);
    let uuid = create(&server, "patched", 1).await;
    let path = format!("/api/infra/v1/nodecluster/{uuid}/");
    let (low, high) = bounds(&patch["properties"]["target_num_nodes"]);
    for (body, status) in [
        (json!({"target_num_nodes": low}), 200),
        (json!({"target_num_nodes": high}), 200),
        (json!({"target_num_nodes": high + 1}), 400),
        (json!({"tags": [{"name": "x"}]}), 200),
        (json!({"nickname": "patched nickname"}), 200),
        (json!({"auto_replace": true}), 200),
        (json!({"name": "renamed"}), 400),
    ] {
        let reply = server.call(Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(reply.status, status, "{body}: {:?}", reply.body);
    }
    let cluster = server.get(&path).await.body;
    assert_eq!(cluster["auto_replace"], true);
    assert_eq!(cluster["target_num_nodes"], high);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_what_is_wrong() {
    let (server, _, _dir) = server().await;
    let cases = [
        (
            json!({"region": "us-east-1", "node_type": "t3.micro"}),
            400,
            "name",
        ),
        (
            json!({"name": "a", "region": "/api/infra/v1/region/aws/mars-1/", "node_type": "t3.micro"}),
            400,
            "mars-1",
        ),
        (
            json!({"name": "a", "region": "us-east-1", "node_type": "/api/infra/v1/nodetype/aws/z9.huge/"}),
            400,
            "z9.huge",
        ),
        (
            json!({"name": "a", "region": "us-east-1", "node_type": "t3.micro", "target_num_nodes": "many"}),
            400,
            "target_num_nodes",
        ),
        (
            json!({"name": "a", "region": "us-east-1", "node_type": "t3.micro", "disk": 2}),
            400,
            "disk",
        ),
        (
            json!({"name": "a", "region": "us-east-1", "node_type": "t3.micro", "provider_options": {"vpc": {"subnets": []}}}),
            400,
            "provider_options.vpc.id",
        ),
        (json!(["not", "an", "object"]), 400, "body"),
    ];
    for (body, status, needle) in cases {
        let reply = server
            .call(Method::POST, &uri::node_clusters(), Some(body.clone()))
            .await;
        assert_eq!(reply.status, status, "{body}: {:?}", reply.body);
        let error = reply.body["error"].as_str().expect("error message");
        assert!(error.contains(needle), "{needle} not in {error}");
    }
    let auth = (
        server.credentials.username.clone(),
        server.credentials.api_key.clone(),
    );
    let auth = Some((auth.0.as_str(), auth.1.as_str()));
    let bad_json = server
        .raw(
            Method::POST,
            &uri::node_clusters(),
            Some("{\"name\": "),
            auth,
        )
        .await;
    assert_eq!(bad_json.status, 415);
    assert!(
        bad_json.body["error"]
            .as_str()
            .expect("error")
            .contains("JSON")
    );
    let bad_type = server
        .client
        .post(format!("{}{}", server.base, uri::node_clusters()))
        .basic_auth(
            &server.credentials.username,
            Some(&server.credentials.api_key),
        )
        .header("Content-Type", "text/plain")
        .body("name=x")
        .send()
        .await
        .expect("request");
    assert_eq!(bad_type.status().as_u16(), 415);

    let uuid = create(&server, "web", 1).await;
    let duplicate = server
        .call(
            Method::POST,
            &uri::node_clusters(),
            Some(create_body("web", 1)),
        )
        .await;
    assert_eq!(duplicate.status, 409);
    assert!(
        duplicate.body["error"]
            .as_str()
            .expect("error")
            .contains("web")
    );
    let path = uri::node_cluster(&uuid);
    for (body, needle) in [
        (json!({"state": "Deployed"}), "state"),
        (json!({"target_num_nodes": 100000}), "target_num_nodes"),
        (json!({"tags": "web"}), "tags"),
        (json!({"nickname": 7}), "nickname"),
    ] {
        let reply = server.call(Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(reply.status, 400, "{body}");
        assert!(
            reply.body["error"]
                .as_str()
                .expect("error")
                .contains(needle),
            "{:?}",
            reply.body
        );
    }
    assert_eq!(server.call(Method::PUT, &path, None).await.status, 405);
    assert_eq!(
        server
            .call(Method::POST, "/api/infra/v1/provider/", None)
            .await
            .status,
        405
    );
    assert_eq!(
        server
            .get("/api/infra/v1/nodecluster/5516c8b6-3d4b-4a52-9a1e-0f8f2d7b9c10/")
            .await
            .status,
        404
    );
    assert_eq!(server.get("/api/infra/v1/bogus/").await.status, 404);
    for query in [
        "limit=1001",
        "limit=x",
        "offset=-3",
        "start_date__gte=yesterday",
    ] {
        let reply = server.get(&format!("{}?{query}", uri::actions())).await;
        assert_eq!(reply.status, 400, "{query}");
    }
    server.stop().await;
}

#[tokio::test]
async fn lists_filter_and_paginate_like_tastypie() {
    let (server, _, _dir) = server().await;
    let mut uuids = Vec::new();
    for i in 0..5 {
        uuids.push(create(&server, &format!("c{i}"), 1).await);
    }
    let page = server
        .get(&format!("{}?limit=2", uri::node_clusters()))
        .await
        .body;
    assert_eq!(page["meta"]["total_count"], 5);
    assert_eq!(page["meta"]["limit"], 2);
    assert_eq!(page["objects"].as_array().map(Vec::len), Some(2));
    let next = page["meta"]["next"].as_str().expect("next");
    assert!(
        next.starts_with(&format!("{}?", uri::node_clusters())),
        "{next}"
    );
    let second = server.get(next).await.body;
    assert_eq!(second["meta"]["offset"], 2);
    assert_eq!(second["objects"][0]["name"], "c2");
    let default = server.get(&uri::node_clusters()).await.body;
    assert_eq!(default["meta"]["limit"], 25);
    assert_eq!(default["meta"]["next"], Value::Null);
    let prefix = &uuids[3][..8];
    let found = server
        .get(&format!(
            "/api/infra/v1/nodecluster/?uuid__startswith={prefix}"
        ))
        .await
        .body;
    assert_eq!(found["meta"]["total_count"], 1);
    assert_eq!(found["objects"][0]["uuid"], uuids[3].as_str());
    let by_name = server
        .get(&format!("{}?name=c4", uri::node_clusters()))
        .await
        .body;
    assert_eq!(by_name["objects"][0]["uuid"], uuids[4].as_str());
    let none = server
        .get(&format!("{}?name=nothing", uri::node_clusters()))
        .await;
    assert_eq!(none.status, 200);
    assert_eq!(none.body["objects"], json!([]));
    let by_state = server
        .get(&format!(
            "{}?state=Init&region=us-east-1",
            uri::node_clusters()
        ))
        .await
        .body;
    assert_eq!(by_state["meta"]["total_count"], 5);
    // Actions: newest first.
    let actions = server.get(&uri::actions()).await.body;
    assert_eq!(actions["meta"]["total_count"], 5);
    assert_eq!(
        actions["objects"][0]["object"],
        format!("/api/infra/v1/nodecluster/{}/", uuids[4])
    );
    // The app stub the tag commands need.
    for path in [
        "/api/app/v1/service/",
        "/api/app/v1/service",
        "/api/app/v1/admin/service/?name=x",
    ] {
        let services = server.get(path).await;
        assert_eq!(services.status, 200, "{path}");
        assert_eq!(services.body["objects"], json!([]));
        assert_eq!(services.body["meta"]["total_count"], 0);
    }
    server.stop().await;
}

/// `GET node/` pages and filters in SQL for the filters clients use; any other filter takes
/// the generic in-memory path. Both must give the same rows, order and totals: an unknown
/// filter (`zz`, which filters nothing) forces the generic path for comparison.
#[tokio::test]
async fn node_pages_from_sql_match_the_generic_list() {
    let (server, _, _dir) = server().await;
    let mut clusters = Vec::new();
    for (name, size) in [("a", 3), ("b", 4)] {
        let uuid = create(&server, name, size).await;
        let deploy = server
            .call(Method::POST, &uri::node_cluster_deploy(&uuid), None)
            .await;
        assert_eq!(deploy.status, 202, "{:?}", deploy.body);
        server.wait_for_cluster(&uuid, "Deployed", LIMIT).await;
        clusters.push(uuid);
    }
    let all = server.get(&format!("{}?limit=0", uri::nodes())).await.body;
    assert_eq!(all["meta"]["total_count"], 7, "{all:#}");
    let uuids: Vec<&str> = all["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|n| n["uuid"].as_str().expect("uuid"))
        .collect();
    // Oldest first: the first cluster's nodes come first.
    let first_of_a = format!("/api/infra/v1/nodecluster/{}/", clusters[0]);
    assert!(
        all["objects"].as_array().expect("objects")[..3]
            .iter()
            .all(|n| n["node_cluster"] == first_of_a.as_str()),
        "{all:#}"
    );
    let b = &clusters[1];
    let queries = [
        String::new(),
        "limit=2".into(),
        "limit=2&offset=3".into(),
        "offset=6".into(),
        "offset=50".into(),
        format!("node_cluster={b}"),
        format!("node_cluster=/api/infra/v1/nodecluster/{b}/"),
        format!("node_cluster=/api/infra/v1/nodecluster/{b}"),
        format!("node_cluster=/api/infra/v1/nodecluster/{b}/&limit=1&offset=2&state=Deployed"),
        "state=Deployed".into(),
        "state=Terminated".into(),
        format!("uuid={}", uuids[4]),
        format!("uuid__startswith={}", &uuids[5][..6]),
        "uuid__startswith=".into(),
        "uuid__startswith=zz".into(),
        "state=Deployed&state=Terminated".into(),
    ];
    for query in &queries {
        let fast = server.get(&format!("{}?{query}", uri::nodes())).await;
        let generic = server.get(&format!("{}?{query}&zz=1", uri::nodes())).await;
        assert_eq!(fast.status, 200, "{query}: {:?}", fast.body);
        assert_eq!(fast.body["objects"], generic.body["objects"], "{query}");
        for field in ["total_count", "limit", "offset"] {
            assert_eq!(
                fast.body["meta"][field], generic.body["meta"][field],
                "{query}"
            );
        }
        assert_eq!(
            fast.body["meta"]["next"].is_null(),
            generic.body["meta"]["next"].is_null(),
            "{query}"
        );
    }
    let in_b = server
        .get(&format!("{}?node_cluster={b}&limit=3", uri::nodes()))
        .await
        .body;
    assert_eq!(in_b["meta"]["total_count"], 4);
    assert_eq!(in_b["objects"].as_array().map(Vec::len), Some(3));
    let next = in_b["meta"]["next"].as_str().expect("next page");
    assert!(next.contains(&format!("node_cluster={b}")), "{next}");
    let rest = server.get(next).await.body;
    assert_eq!(
        rest["objects"].as_array().map(Vec::len),
        Some(1),
        "{rest:#}"
    );
    let prefix = server
        .get(&format!(
            "/api/infra/v1/node/?uuid__startswith={}",
            uuids[2]
        ))
        .await
        .body;
    assert_eq!(prefix["meta"]["total_count"], 1);
    assert_eq!(prefix["objects"][0]["uuid"], uuids[2]);
    let bad = server.get(&format!("{}?limit=5000", uri::nodes())).await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body["error"].as_str().unwrap_or("").contains("limit"),
        "{:?}",
        bad.body
    );
    server.stop().await;
}

#[tokio::test]
async fn a_cluster_deploys_scales_is_tagged_and_terminates() {
    let (server, cloud, _dir) = server().await;
    let uuid = create(&server, "web", 6).await;
    let path = uri::node_cluster(&uuid);
    let deploy = server
        .call(Method::POST, &format!("{path}deploy/"), None)
        .await;
    assert_eq!(deploy.status, 202, "{:?}", deploy.body);
    assert_eq!(deploy.body["uuid"], uuid.as_str());
    let deploy_action = deploy.action_uri.expect("action header");
    let action = server.wait_for_action(&deploy_action, LIMIT).await;
    assert_eq!(action["state"], "Success", "{action:#}");
    assert!(
        action["logs"].as_str().expect("logs").contains("launched"),
        "{action:#}"
    );
    date::parse(action["end_date"].as_str().expect("end date")).expect("date");
    // The action ends in the same transaction as the cluster's state change.
    let at_once = server.get(&path).await.body;
    assert_eq!(at_once["state"], "Deployed", "{at_once:#}");
    let cluster = server.wait_for_cluster(&uuid, "Deployed", LIMIT).await;
    assert_eq!(cluster["current_num_nodes"], 6);
    assert_eq!(cluster["nodes"].as_array().map(Vec::len), Some(6));
    date::parse(cluster["deployed_datetime"].as_str().expect("deployed")).expect("date");

    let again = server
        .call(Method::POST, &format!("{path}deploy/"), None)
        .await;
    assert_eq!(again.status, 400);
    assert!(
        again.body["error"]
            .as_str()
            .expect("error")
            .contains("Deployed")
    );

    let nodes = server
        .get(&format!("{}?node_cluster={path}", uri::nodes()))
        .await
        .body;
    assert_eq!(nodes["meta"]["total_count"], 6);
    let node = &nodes["objects"][0];
    for field in [
        "uuid",
        "external_fqdn",
        "last_seen",
        "state",
        "node_cluster",
        "docker_version",
    ] {
        assert!(node.get(field).is_some(), "node ls reads {field}");
    }
    assert_eq!(node["state"], "Deployed");
    assert_eq!(node["node_cluster"], path.as_str());
    date::parse(node["last_seen"].as_str().expect("last seen")).expect("date");
    assert!(
        node["private_ips"][0]["cidr"]
            .as_str()
            .expect("cidr")
            .contains('/')
    );

    // Tags: replaced, de-duplicated by name, synchronous.
    let tagged = server
        .call(Method::PATCH, &path, Some(json!({"tags": [{"name": "web"}, {"name": "db", "origin": "user"}, {"name": "db"}]})))
        .await;
    assert_eq!(tagged.status, 200, "{:?}", tagged.body);
    assert_eq!(
        tagged.body["tags"],
        json!([{"name": "web"}, {"name": "db"}])
    );
    assert!(tagged.action_uri.is_some());

    let scale = server
        .call(Method::PATCH, &path, Some(json!({"target_num_nodes": 9})))
        .await;
    assert_eq!(scale.status, 202, "{:?}", scale.body);
    assert_eq!(scale.body["target_num_nodes"], 9);
    let scaled = server
        .wait_for_action(&scale.action_uri.expect("header"), LIMIT)
        .await;
    assert_eq!(scaled["state"], "Success");
    let cluster = server.wait_for_cluster(&uuid, "Deployed", LIMIT).await;
    assert_eq!(cluster["current_num_nodes"], 9);

    // Removing one node shrinks the target.
    let node_uuid = cluster["nodes"][0].as_str().expect("node uri").to_owned();
    let removed = server.call(Method::DELETE, &node_uuid, None).await;
    assert_eq!(removed.status, 202, "{:?}", removed.body);
    assert_eq!(removed.body["state"], "Terminating");
    server
        .wait_for_action(&removed.action_uri.expect("header"), LIMIT)
        .await;
    let cluster = server.wait_for_cluster(&uuid, "Deployed", LIMIT).await;
    assert_eq!(cluster["target_num_nodes"], 8);
    assert_eq!(cluster["current_num_nodes"], 8);
    assert_eq!(server.get(&node_uuid).await.body["state"], "Terminated");
    assert_eq!(cloud.alive(&uuid).len(), 8);

    let delete = server.call(Method::DELETE, &path, None).await;
    assert_eq!(delete.status, 202);
    assert_eq!(delete.body["state"], "Terminating");
    let deleted = server
        .wait_for_action(&delete.action_uri.expect("header"), LIMIT)
        .await;
    assert_eq!(deleted["state"], "Success", "{deleted:#}");
    let cluster = server.wait_for_cluster(&uuid, "Terminated", LIMIT).await;
    date::parse(cluster["destroyed_datetime"].as_str().expect("destroyed")).expect("date");
    assert_eq!(cluster["current_num_nodes"], 0);
    assert!(cloud.alive(&uuid).is_empty());
    assert_eq!(cloud.calls("teardown_network"), 1);
    assert_eq!(server.call(Method::DELETE, &path, None).await.status, 400);
    // The terminated cluster is still listed ("recently terminated").
    let listed = server
        .get(&format!("{}?state=Terminated", uri::node_clusters()))
        .await
        .body;
    assert_eq!(listed["meta"]["total_count"], 1);
    server.stop().await;
}

#[tokio::test]
async fn a_failed_deploy_fails_its_action_with_the_reason_and_can_be_retried() {
    let (server, cloud, _dir) = server().await;
    for zone in ["a", "b", "c", "d", "e", "f"] {
        cloud.set_no_capacity(&format!("us-east-1{zone}"), true);
    }
    let uuid = create(&server, "web", 2).await;
    let deploy = server
        .call(Method::POST, &uri::node_cluster_deploy(&uuid), None)
        .await;
    let action_uri = deploy.action_uri.expect("header");
    let action = server.wait_for_action(&action_uri, LIMIT).await;
    assert_eq!(action["state"], "Failed");
    assert_eq!(action["can_be_retried"], true);
    assert!(
        action["logs"]
            .as_str()
            .expect("logs")
            .contains("no capacity"),
        "{action:#}"
    );
    // No node came up: "Empty cluster" (no nodes deployed), not "Partly deployed" (some
    // nodes deployed and running).
    let cluster = server.wait_for_cluster(&uuid, "Empty cluster", LIMIT).await;
    assert_eq!(cluster["current_num_nodes"], 0);

    let cancel = server
        .call(Method::POST, &format!("{action_uri}cancel/"), None)
        .await;
    assert_eq!(cancel.status, 400, "a finished action cannot be canceled");

    for zone in ["a", "b", "c", "d", "e", "f"] {
        cloud.set_no_capacity(&format!("us-east-1{zone}"), false);
    }
    let retry = server
        .call(Method::POST, &format!("{action_uri}retry/"), None)
        .await;
    assert_eq!(retry.status, 202, "{:?}", retry.body);
    let action = server.wait_for_action(&action_uri, LIMIT).await;
    assert_eq!(action["state"], "Success", "{action:#}");
    let cluster = server.wait_for_cluster(&uuid, "Deployed", LIMIT).await;
    assert_eq!(cluster["current_num_nodes"], 2);
    server.stop().await;
}
