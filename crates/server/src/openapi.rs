//! The OpenAPI 3.1 document of everything the server serves, answered at
//! `GET /api/openapi.json` ([`PATH`]).
//!
//! Design decisions:
//! * Paths, authentication and namespacing are not written here: they come from the route
//!   table ([`crate::routes::endpoint`]), which the dispatcher also answers from. What this
//!   module adds per route — tag, and per method a summary and request and response
//!   schemas — is written in an exhaustive `match` over [`crate::routes::Route`] (a new
//!   route does not compile until it is described). A test checks that each route's
//!   operations are exactly the table's methods and that every document path parses back
//!   to its route.
//! * Response objects (providers, regions, zones, node types, node clusters, nodes,
//!   actions, the list `meta` and the error body) are derived from `flotilla-api`'s wire
//!   types with schemars (feature `schema`): the server renders every answer from those
//!   types, so the document cannot drift from them. Request bodies stay written here,
//!   because they describe what the server *accepts* (a `disk` given as digits, tags as
//!   names or objects, the bounds of `flotilla_core::spec`), which no wire type says; a
//!   contract test sends those bounds to the server.
//! * It is served **with** Basic auth, like every route but `/_ping` and the agent's own
//!   routes: an installation's API is private, the document tells a scanner exactly what to
//!   try, and the tools that read it (Swagger UI, generators) can send credentials. It is
//!   built per request; it is small and rarely asked for.
//! * Namespaced resources (`nodecluster`, `node`, `token`, `events`, `service`, and the
//!   action-logs websocket) appear twice, without and with the `{namespace}` segment, as the
//!   contract requires both. REST paths are written with their trailing slash, as the
//!   clients send them; the server also accepts them without it (said in `info`).
//! * It is accurate enough to fuzz from (`tests/it/fuzz.rs` runs schemathesis on it and
//!   checks status codes, content types and bodies against it): every status an operation
//!   can succeed with is listed (200 *and* 202 where an action may finish at once), every
//!   error is the `default` response with the `Error` body, lists declare `limit` (0 to
//!   [`crate::routes::MAX_LIMIT`]) and `offset`, and path parameters and request bodies carry
//!   examples that exist on a fresh installation (`aws`, `us-east-1`, `t3.micro`, the
//!   default admin namespace), so generated requests reach real objects, not only 404s.

use flotilla_core::spec::{
    DEFAULT_SWARM_MANAGERS, MAX_DISK_GB, MAX_NODES, MIN_DISK_GB, SWARM_MANAGER_COUNTS,
};
use serde_json::{Map, Value, json};

use crate::routes::{Auth, Route, endpoint, every_route};

/// Where the document is served.
pub use crate::routes::OPENAPI_PATH as PATH;

/// One operation: method, summary, request body schema, success status and body.
struct Op {
    method: &'static str,
    summary: &'static str,
    request: Option<Value>,
    status: &'static str,
    /// Another success status with the same body (200 when a change was a no-op).
    also: Option<&'static str>,
    response: Value,
    /// A list: takes `limit` and `offset`.
    list: bool,
    /// A text answer of this media type (the dashboard's assets) rather than JSON.
    media: Option<&'static str>,
}

fn op(method: &'static str, summary: &'static str, status: &'static str, response: Value) -> Op {
    Op {
        method,
        summary,
        request: None,
        status,
        also: None,
        list: response.get("allOf").is_some(),
        response,
        media: None,
    }
}

/// The GET and HEAD of one of the dashboard's assets, answered as `media`.
fn asset(media: &'static str) -> Vec<Op> {
    ["get", "head"]
        .into_iter()
        .map(|method| Op {
            media: Some(media),
            ..op(
                method,
                "the web dashboard's page or asset; no auth",
                "200",
                Value::Null,
            )
        })
        .collect()
}

impl Op {
    fn body(mut self, schema: &str) -> Op {
        self.request = Some(schema_ref(schema));
        self
    }
    /// An operation that records an action: 202 while work goes on, 200 when done at once.
    fn or_200(mut self) -> Op {
        self.also = Some("200");
        self
    }
    /// An answer that is usually done at once (200) but may start work (202).
    fn also_202(mut self) -> Op {
        self.also = Some("202");
        self
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn list_of(name: &str) -> Value {
    json!({"allOf": [schema_ref("ListEnvelope"),
        {"type": "object", "properties": {"objects": {"type": "array", "items": schema_ref(name)}}}]})
}

/// A value of a path parameter that names something real on a fresh installation, so
/// generated tests (schemathesis's examples phase) also reach found objects.
fn example(path: &str, parameter: &str) -> Option<&'static str> {
    Some(match parameter {
        "provider" => "aws",
        "region" => "us-east-1",
        "namespace" => "admin",
        "name" if path.contains("/provider/") => "aws",
        "name" if path.contains("/region/") => "us-east-1",
        "name" if path.contains("/az/") => "us-east-1a",
        "name" if path.contains("/nodetype/") => "t3.micro",
        _ => return None,
    })
}

fn parameters(path: &str, list: bool) -> Vec<Value> {
    let mut parameters: Vec<Value> = path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let mut parameter = json!({"name": name, "in": "path", "required": true,
                "schema": {"type": "string"}});
            if let Some(value) = example(path, name) {
                parameter["example"] = json!(value);
            }
            parameter
        })
        .collect();
    if list {
        parameters.push(json!({"name": "limit", "in": "query", "required": false,
            "description": "page size; 0 means the maximum",
            "schema": {"type": "integer", "minimum": 0, "maximum": crate::routes::MAX_LIMIT}}));
        parameters.push(json!({"name": "offset", "in": "query", "required": false,
            "schema": {"type": "integer", "minimum": 0}}));
    }
    parameters
}

fn operation(path: &str, op: &Op, auth: Auth, tag: &str) -> Value {
    let mut object = Map::new();
    object.insert("summary".into(), json!(op.summary));
    object.insert("tags".into(), json!([tag]));
    object.insert("parameters".into(), Value::Array(parameters(path, op.list)));
    let security = match auth {
        Auth::Public => json!([]),
        Auth::Basic => json!([{"basic": []}]),
        Auth::Agent => json!([{"agentToken": []}]),
        Auth::Login => json!([{"session": []}]),
    };
    object.insert("security".into(), security);
    if let Some(schema) = &op.request {
        object.insert(
            "requestBody".into(),
            json!({"required": false, "content": {"application/json": {"schema": schema}}}),
        );
    }
    let error = json!({"description": "error", "content": {"application/json": {"schema": schema_ref("Error")}}});
    let success = if let Some(media) = op.media {
        json!({"description": "OK", "content": {media: {"schema": {"type": "string"}}}})
    } else if op.response.is_null() {
        json!({"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}})
    } else {
        json!({"description": "success", "content": {"application/json": {"schema": op.response}}})
    };
    let mut responses = Map::new();
    if let Some(also) = op.also {
        responses.insert(also.into(), success.clone());
    }
    responses.insert(op.status.into(), success);
    responses.insert("default".into(), error);
    object.insert("responses".into(), Value::Object(responses));
    Value::Object(object)
}

/// What the document says of a route beyond the route table (its path, auth and
/// namespacing are [`crate::routes::endpoint`]'s): its tag and its operations.
fn operations(route: &Route) -> (&'static str, Vec<Op>) {
    let ws = || json!({"description": "a websocket of JSON messages (101 Switching Protocols)"});
    match route {
        Route::Ping => (
            "meta",
            vec![
                op("get", "liveness; no auth", "200", Value::Null),
                op("head", "liveness; no auth", "200", Value::Null),
            ],
        ),
        Route::OpenApi => (
            "meta",
            vec![op("get", "this document", "200", json!({"type": "object"}))],
        ),
        Route::Download => (
            "agent",
            vec![
                op(
                    "get",
                    "the server's own binary, for nodes; no auth",
                    "200",
                    json!({"type": "string", "format": "binary"}),
                ),
                op(
                    "head",
                    "the binary's size; no auth",
                    "200",
                    json!({"type": "string", "format": "binary"}),
                ),
            ],
        ),
        Route::Dashboard => ("dashboard", asset("text/html")),
        Route::DashboardScript => ("dashboard", asset("text/javascript")),
        Route::DashboardStyle => ("dashboard", asset("text/css")),
        Route::Session => (
            "dashboard",
            vec![
                op(
                    "post",
                    "log in to the dashboard with {\"user\", \"key\"}: sets the session cookie; answers the CSRF token",
                    "200",
                    schema_ref("Session"),
                )
                .body("Login"),
                op("get", "the cookie's session and its CSRF token", "200", schema_ref("Session")),
                op("delete", "log out: ends the session and clears the cookie", "200", schema_ref("Session")),
            ],
        ),
        Route::Providers => (
            "infra",
            vec![op("get", "list providers", "200", list_of("Provider"))],
        ),
        Route::Provider(_) => (
            "infra",
            vec![op("get", "get a provider", "200", schema_ref("Provider"))],
        ),
        Route::ProviderCredentials(_) => (
            "infra",
            vec![
                op(
                    "get",
                    "whether AWS keys are linked (never the secret)",
                    "200",
                    schema_ref("ProviderCredentials"),
                ),
                op(
                    "put",
                    "validate and link AWS keys (400 with the reasons when invalid)",
                    "200",
                    schema_ref("ProviderCredentials"),
                )
                .body("AccessKeys"),
            ],
        ),
        Route::Regions => (
            "infra",
            vec![op("get", "list regions", "200", list_of("Region"))],
        ),
        Route::Region(..) => (
            "infra",
            vec![op("get", "get a region", "200", schema_ref("Region"))],
        ),
        Route::RegionVpcs(..) => (
            "infra",
            vec![op(
                "get",
                "list the region's VPCs with their Name tags (Flotilla's own flagged); cached 30 s",
                "200",
                list_of("Vpc"),
            )],
        ),
        Route::RegionSubnets(..) => (
            "infra",
            vec![op(
                "get",
                "list the region's subnets with AZ and free addresses (filter vpc_id); cached 30 s",
                "200",
                list_of("VpcSubnet"),
            )],
        ),
        Route::RegionSecurityGroups(..) => (
            "infra",
            vec![op(
                "get",
                "list the region's security groups (filter vpc_id); cached 30 s",
                "200",
                list_of("SecurityGroup"),
            )],
        ),
        Route::InstanceProfiles(_) => (
            "infra",
            vec![op(
                "get",
                "list the account's IAM instance profiles; cached 30 s",
                "200",
                list_of("InstanceProfile"),
            )],
        ),
        Route::AvailabilityZones => (
            "infra",
            vec![op(
                "get",
                "list availability zones",
                "200",
                list_of("AvailabilityZone"),
            )],
        ),
        Route::AvailabilityZone(..) => (
            "infra",
            vec![op(
                "get",
                "get an availability zone",
                "200",
                schema_ref("AvailabilityZone"),
            )],
        ),
        Route::NodeTypes => (
            "infra",
            vec![op("get", "list node types", "200", list_of("NodeType"))],
        ),
        Route::NodeType(..) => (
            "infra",
            vec![op("get", "get a node type", "200", schema_ref("NodeType"))],
        ),
        Route::Clusters => (
            "infra",
            vec![
                op("get", "list node clusters", "200", list_of("NodeCluster")),
                op(
                    "post",
                    "create a node cluster (state Init)",
                    "201",
                    schema_ref("NodeCluster"),
                )
                .body("NodeClusterCreate"),
            ],
        ),
        Route::Cluster(_) => (
            "infra",
            vec![
                op(
                    "get",
                    "get a node cluster",
                    "200",
                    schema_ref("NodeCluster"),
                ),
                op(
                    "patch",
                    "scale, retag or rename a node cluster",
                    "202",
                    schema_ref("NodeCluster"),
                )
                .body("NodeClusterPatch")
                .or_200(),
                op(
                    "delete",
                    "terminate a node cluster and its nodes",
                    "202",
                    schema_ref("NodeCluster"),
                )
                .or_200(),
            ],
        ),
        Route::Swarms => (
            "infra",
            vec![
                op("get", "list swarms", "200", list_of("Swarm")),
                op(
                    "post",
                    "create a swarm: its manager and worker node clusters are deployed at once",
                    "201",
                    schema_ref("Swarm"),
                )
                .body("SwarmCreate"),
            ],
        ),
        Route::Swarm(_) => (
            "infra",
            vec![
                op(
                    "get",
                    "get a swarm, its nodes and their roles",
                    "200",
                    schema_ref("Swarm"),
                ),
                op(
                    "patch",
                    "change the number of managers (refused when quorum could be lost)",
                    "202",
                    schema_ref("Swarm"),
                )
                .body("SwarmPatch")
                .or_200(),
                op(
                    "delete",
                    "terminate a swarm and its node clusters",
                    "202",
                    schema_ref("Swarm"),
                )
                .or_200(),
            ],
        ),
        Route::Metrics => (
            "monitoring",
            vec![op(
                "get",
                "metrics in the Prometheus text format",
                "200",
                Value::Null,
            )],
        ),
        Route::Readyz => (
            "monitoring",
            vec![Op {
                also: Some("503"),
                ..op(
                    "get",
                    "every health check behind /_ping with its detail (503 when one fails)",
                    "200",
                    json!({"type": "object", "required": ["ready", "checks"], "properties": {
                        "ready": {"type": "boolean"},
                        "checks": {"type": "array", "items": {"type": "object",
                            "required": ["name", "ok", "detail"], "properties": {
                                "name": {"type": "string"}, "ok": {"type": "boolean"},
                                "detail": {"type": "string"}}}}}}),
                )
            }],
        ),
        Route::SwarmService(_) => (
            "monitoring",
            vec![op(
                "get",
                "a swarm service's desired and running tasks, and on which nodes (by id or name)",
                "200",
                schema_ref("SwarmService"),
            )],
        ),
        Route::ClusterDeploy(_) => (
            "infra",
            vec![
                op(
                    "post",
                    "deploy an Init node cluster",
                    "202",
                    schema_ref("NodeCluster"),
                )
                .or_200(),
            ],
        ),
        Route::ClusterPreview => (
            "infra",
            vec![
                op(
                    "post",
                    "check a node cluster body as a create would (name optional) and answer where its nodes would land; creates nothing",
                    "200",
                    schema_ref("ClusterPreview"),
                )
                .body("NodeClusterCreate"),
            ],
        ),
        Route::Nodes => (
            "infra",
            vec![op("get", "list nodes", "200", list_of("Node"))],
        ),
        Route::Node(_) => (
            "infra",
            vec![
                op("get", "get a node", "200", schema_ref("Node")),
                op("patch", "retag or rename a node", "200", schema_ref("Node"))
                    .body("NodePatch")
                    .also_202(),
                op("delete", "terminate a node", "202", schema_ref("Node")).or_200(),
            ],
        ),
        Route::NodeHealthCheck(_) => (
            "infra",
            vec![
                op(
                    "post",
                    "check a node's health now (its agent's last heartbeat)",
                    "202",
                    schema_ref("Node"),
                )
                .or_200(),
            ],
        ),
        Route::Token => (
            "infra",
            vec![op(
                "post",
                "create a bring-your-own-node token",
                "201",
                json!({"type": "object", "properties": {"token": {"type": "string"}}}),
            )],
        ),
        Route::Actions => (
            "audit",
            vec![op("get", "list actions", "200", list_of("Action"))],
        ),
        Route::Action(_) => (
            "audit",
            vec![op("get", "get an action", "200", schema_ref("Action"))],
        ),
        Route::ActionCancel(_) => (
            "audit",
            vec![op(
                "post",
                "cancel a pending or running action",
                "202",
                schema_ref("Action"),
            )],
        ),
        Route::ActionRetry(_) => (
            "audit",
            vec![op(
                "post",
                "retry a finished action",
                "202",
                schema_ref("Action"),
            )],
        ),
        Route::ActionLogs(_) => (
            "audit",
            vec![op(
                "get",
                "websocket: an action's log lines (?follow=, ?tail=)",
                "101",
                ws(),
            )],
        ),
        Route::Events => (
            "audit",
            vec![op(
                "get",
                "websocket: the event stream (also /events/)",
                "101",
                ws(),
            )],
        ),
        Route::Services => (
            "app",
            vec![op(
                "get",
                "list services (always empty: Flotilla runs no services)",
                "200",
                list_of("Object"),
            )],
        ),
        Route::AgentNodes => (
            "agent",
            vec![
                op(
                    "post",
                    "register a node's agent with a batch token or its node credential",
                    "201",
                    schema_ref("AgentNode"),
                )
                .body("AgentRegistration"),
            ],
        ),
        Route::AgentNode(_) => (
            "agent",
            vec![
                op("get", "the agent's node", "200", schema_ref("AgentNode")),
                op(
                    "patch",
                    "report what the agent learned",
                    "200",
                    schema_ref("AgentNode"),
                )
                .body("AgentNodeUpdate"),
            ],
        ),
        Route::AgentNodeDockerProxy(_) => (
            "agent",
            vec![op(
                "post",
                "a swarm manager's Docker API proxy certificate, for its public key",
                "200",
                json!({"type": "object", "properties": {"ca_pem": {"type": "string"}, "cert_pem": {"type": "string"}, "port": {"type": "integer"}}}),
            )],
        ),
        Route::AgentNodeBundleCheck(_) => (
            "agent",
            vec![op(
                "post",
                "who holds a client certificate (by fingerprint) and their role on the node's swarm",
                "200",
                json!({"type": "object", "properties": {"username": {"type": "string"}, "role": {"type": "string"}, "refused": {"type": "string"}}}),
            )],
        ),
        Route::AgentNodePing(_) => (
            "agent",
            vec![op(
                "post",
                "heartbeat",
                "200",
                json!({"type": "object", "properties": {"reachable": {"type": "boolean"}}}),
            )],
        ),
        Route::Orgs => (
            "access",
            vec![
                op("get", "list the organizations you belong to", "200", list_of("Organization")),
                op("post", "create an organization", "201", schema_ref("Organization"))
                    .body("OrgCreate"),
            ],
        ),
        Route::Org(_) => (
            "access",
            vec![
                op("get", "an organization", "200", schema_ref("Organization")),
                op("delete", "remove an organization that owns nothing live", "200", schema_ref("Organization")),
            ],
        ),
        Route::Teams(_) => (
            "access",
            vec![
                op("get", "list an organization's teams", "200", list_of("Team")),
                op("post", "create a team", "201", schema_ref("Team")).body("TeamCreate"),
            ],
        ),
        Route::Team(..) => (
            "access",
            vec![
                op("get", "a team and its members", "200", schema_ref("Team")),
                op("patch", "add and remove members", "200", schema_ref("Team")).body("TeamPatch"),
                op("delete", "remove a team with its grants", "200", schema_ref("Team")),
            ],
        ),
        Route::Grants(_) => (
            "access",
            vec![
                op("get", "list an organization's grants", "200", list_of("Grant")),
                op("post", "grant a team a role on a resource or on all (*)", "201", schema_ref("Grant"))
                    .body("GrantCreate"),
            ],
        ),
        Route::Grant(..) => (
            "access",
            vec![op("delete", "revoke a grant", "200", schema_ref("Grant"))],
        ),
        Route::Users => (
            "access",
            vec![
                op("get", "list users (yourself unless administrator)", "200", list_of("User")),
                op(
                    "post",
                    "create a user: answers {user, api_key} with its first key, shown once",
                    "201",
                    json!({"type": "object", "properties": {"user": schema_ref("User"), "api_key": schema_ref("ApiKey")}}),
                )
                .body("UserCreate"),
            ],
        ),
        Route::User(_) => (
            "access",
            vec![
                op("get", "a user", "200", schema_ref("User")),
                op("patch", "set or remove the password", "200", schema_ref("User")).body("UserPatch"),
                op("delete", "remove a user: revokes its keys and memberships", "200", schema_ref("User")),
            ],
        ),
        Route::ApiKeys(_) => (
            "access",
            vec![
                op("get", "list a user's keys (never the keys themselves)", "200", list_of("ApiKey")),
                op("post", "create a key: the answer's `key` is shown once", "201", schema_ref("ApiKey"))
                    .body("ApiKeyCreate"),
            ],
        ),
        Route::ApiKey(..) => (
            "access",
            vec![op("delete", "revoke a key (by id or name): refused from the next request", "200", schema_ref("ApiKey"))],
        ),
        Route::Bundles(_) => (
            "access",
            vec![
                op("get", "list a user's client bundles (never their keys)", "200", list_of("Bundle")),
                op("post", "create a client bundle for the docker CLI: the answer's zip (base64, with the key) is shown once", "201", schema_ref("BundleCreated"))
                    .body("BundleCreate"),
            ],
        ),
        Route::Bundle(..) => (
            "access",
            vec![
                op("get", "a client bundle", "200", schema_ref("Bundle")),
                op("delete", "revoke a client bundle: every swarm's proxy refuses it from its next request", "200", schema_ref("Bundle")),
            ],
        ),
        Route::Ldap => (
            "access",
            vec![
                op("get", "the LDAP / Active Directory settings (never the bind passwords)", "200", schema_ref("LdapSettings")),
                op("put", "replace the LDAP settings (empty servers: LDAP off); bind passwords are sealed", "200", schema_ref("LdapSettings"))
                    .body("LdapSettingsPut"),
            ],
        ),
        Route::LdapSync => (
            "access",
            vec![op("post", "sync directory users and group-mapped teams now", "200", schema_ref("LdapSyncReport"))],
        ),
    }
}

/// The route table's access rule for a method, as the document states it.
fn access_text(route: &Route, method: &str) -> String {
    use crate::routes::Access;
    let method = axum::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .unwrap_or(axum::http::Method::GET);
    match crate::routes::access(route, &method) {
        Access::Anyone => "any signed-in user".into(),
        Access::Visible => "any signed-in user; lists only what the caller may view".into(),
        Access::Resource(role) => format!("role '{role}' on the resource (404 if not visible)"),
        Access::Create(role) => format!("role '{role}' on all of the organization"),
        Access::Org(role) => format!("role '{role}' on the organization"),
        Access::SelfOrAdmin => "the user named, or the server administrator".into(),
        Access::ServerAdmin => "the server administrator".into(),
    }
}

/// `/api/<sub>/v1/<rest>` → `/api/<sub>/v1/{namespace}/<rest>`.
fn namespaced(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/")?;
    let (subsystem, rest) = rest.split_once("/v1/")?;
    Some(format!("/api/{subsystem}/v1/{{namespace}}/{rest}"))
}

fn schemas() -> Value {
    let object = |properties: Value| json!({"type": "object", "properties": properties, "additionalProperties": true});
    let tags = json!({"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {"name": {"type": "string"}}}]}});
    // The bounds the server enforces (`flotilla_core::spec`, `App::patch_cluster`).
    let target = json!({"type": "integer", "minimum": 0, "maximum": MAX_NODES});
    let mut written = json!({
        "Login": {"type": "object", "required": ["user", "key"], "properties": {
            "user": {"type": "string"}, "key": {"type": "string", "description": "the API key (or password)"}}},
        "Session": {"type": "object", "properties": {
            "user": {"type": "string"}, "csrf_token": {"type": "string",
                "description": "send it as X-CSRF-Token with every change made with the cookie"}}},
        "ListEnvelope": {"type": "object", "required": ["meta", "objects"], "properties": {
            "meta": schema_ref("Meta"),
            "objects": {"type": "array", "items": {}}}},
        "Object": {"type": "object"},
        "AccessKeys": {"type": "object", "required": ["access_key_id", "secret_access_key"], "properties": {
            "access_key_id": {"type": "string"}, "secret_access_key": {"type": "string"},
            "session_token": {"type": "string"}},
            "example": {"access_key_id": "AKIAEXAMPLEEXAMPLE00", "secret_access_key": "example/secret/key"}},
        "ProviderCredentials": object(json!({"provider": {"type": "string"}, "linked": {"type": "boolean"},
            "access_key_id": {"type": ["string", "null"]}, "resource_uri": {"type": "string"},
            "validation": {"type": "object"}})),
        "NodeClusterCreate": {"type": "object", "required": ["name", "region", "node_type"], "properties": {
            "name": {"type": "string"}, "nickname": {"type": "string"},
            "region": {"type": "string", "description": "/api/infra/v1/region/{provider}/{name}/"},
            "node_type": {"type": "string", "description": "/api/infra/v1/nodetype/{provider}/{name}/"},
            "target_num_nodes": target.clone(),
            "disk": {"type": ["integer", "string"], "description": "GB (a number, or its digits as a string)",
                "minimum": MIN_DISK_GB, "maximum": MAX_DISK_GB},
            "tags": tags.clone(), "provider_options": {"type": "object"},
            "auto_replace": {"type": "boolean"}},
            "example": {"name": "example", "target_num_nodes": 1,
                "region": "/api/infra/v1/region/aws/us-east-1/",
                "node_type": "/api/infra/v1/nodetype/aws/t3.micro/"}},
        "SwarmCreate": {"type": "object", "required": ["name", "region", "manager_node_type"], "properties": {
            "name": {"type": "string"},
            "region": {"type": "string", "description": "/api/infra/v1/region/{provider}/{name}/"},
            "manager_count": {"type": "integer", "enum": SWARM_MANAGER_COUNTS, "default": DEFAULT_SWARM_MANAGERS},
            "manager_node_type": {"type": "string", "description": "/api/infra/v1/nodetype/{provider}/{name}/"},
            "worker_count": {"type": "integer", "minimum": 0, "maximum": MAX_NODES, "default": 0},
            "worker_node_type": {"type": "string", "description": "default: manager_node_type"},
            "disk": {"type": ["integer", "string"], "description": "GB (a number, or its digits as a string)",
                "minimum": MIN_DISK_GB, "maximum": MAX_DISK_GB},
            "tags": tags.clone(), "provider_options": {"type": "object"}},
            "example": {"name": "example", "manager_count": 3, "worker_count": 2,
                "region": "/api/infra/v1/region/aws/us-east-1/",
                "manager_node_type": "/api/infra/v1/nodetype/aws/t3.micro/"}},
        "SwarmPatch": {"type": "object", "additionalProperties": false, "properties": {
            "manager_count": {"type": "integer", "enum": SWARM_MANAGER_COUNTS}}},
        "NodeClusterPatch": {"type": "object", "additionalProperties": false, "properties": {
            "target_num_nodes": target, "tags": tags.clone(), "nickname": {"type": "string"},
            "auto_replace": {"type": "boolean"}}},
        "NodePatch": {"type": "object", "properties": {"tags": tags, "nickname": {"type": "string"}}},
        "AgentRegistration": {"type": "object", "required": ["agent_version", "cluster", "slot", "first_slot", "count"], "properties": {
            "agent_version": {"type": "string"}, "cluster": {"type": "string"}, "slot": {"type": "integer"},
            "first_slot": {"type": "integer"}, "count": {"type": "integer"},
            "private_ips": {"type": "array", "items": {"type": "string"}}, "docker_version": {"type": "string"}}},
        "OrgCreate": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "TeamCreate": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"},
            "members": {"type": "array", "items": {"type": "string"}},
            "ldap_group_dn": {"type": ["string", "null"]}}},
        "TeamPatch": {"type": "object", "additionalProperties": false, "properties": {
            "add_members": {"type": "array", "items": {"type": "string"}},
            "remove_members": {"type": "array", "items": {"type": "string"}},
            "ldap_group_dn": {"type": ["string", "null"]}}},
        "LdapSettingsPut": {"type": "object", "required": ["servers", "searches"], "properties": {
            "servers": {"type": "array", "items": {"type": "object", "required": ["url", "tls", "bind_dn"], "properties": {
                "url": {"type": "string"}, "tls": {"type": "string", "enum": ["ldaps", "starttls", "none"]},
                "ca_pem": {"type": ["string", "null"]}, "bind_dn": {"type": "string"},
                "bind_password": {"type": "string"}, "domain": {"type": ["string", "null"]}}}},
            "searches": {"type": "array", "items": {"type": "object",
                "required": ["base_dn", "scope", "filter", "username_attribute"], "properties": {
                "base_dn": {"type": "string"}, "scope": {"type": "string", "enum": ["base", "one", "sub"]},
                "filter": {"type": "string"}, "username_attribute": {"type": "string"},
                "full_name_attribute": {"type": ["string", "null"]}}}}}},
        "GrantCreate": {"type": "object", "required": ["team", "role"], "properties": {"team": {"type": "string"},
            "role": {"type": "string", "enum": ["view", "operate", "manage", "admin"]},
            "resource": {"type": "string", "description": "* (default), or a node cluster's or swarm's uuid or URI"}}},
        "UserCreate": {"type": "object", "required": ["username"], "properties": {"username": {"type": "string"},
            "password": {"type": "string", "minLength": 12}, "admin": {"type": "boolean"}}},
        "UserPatch": {"type": "object", "additionalProperties": false, "properties": {
            "password": {"type": ["string", "null"], "minLength": 12}}},
        "ApiKeyCreate": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "BundleCreate": {"type": "object", "properties": {"swarm": {"type": "string", "description": "the swarm (uuid or name) whose manager env.sh points DOCKER_HOST at"}}},
        "AgentNodeUpdate": {"type": "object", "properties": {"agent_version": {"type": "string"},
            "docker_version": {"type": "string"}, "private_ips": {"type": "array", "items": {"type": "string"}}}},
        "AgentNode": object(json!({"uuid": {"type": "string"}, "external_fqdn": {"type": "string"},
            "public_ip": {"type": ["string", "null"]}, "state": {"type": "string"}, "resource_uri": {"type": "string"},
            "credential": {"type": "string", "description": "only in the answer to a first registration"}})),
    });
    if let Some(written) = written.as_object_mut() {
        written.extend(derived_schemas());
    }
    written
}

/// The response objects, derived from `flotilla-api`'s wire types (the types the server
/// renders every answer from) with schemars: a field added to a wire type is in the
/// document without an edit here.
fn derived_schemas() -> Map<String, Value> {
    use flotilla_api::types as api;
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|settings| settings.definitions_path = "/components/schemas".into())
        .into_generator();
    generator.subschema_for::<api::Provider>();
    generator.subschema_for::<api::Region>();
    generator.subschema_for::<api::AvailabilityZone>();
    generator.subschema_for::<api::NodeType>();
    generator.subschema_for::<api::NodeCluster>();
    generator.subschema_for::<api::Node>();
    generator.subschema_for::<api::Swarm>();
    generator.subschema_for::<api::SwarmService>();
    generator.subschema_for::<api::Action>();
    generator.subschema_for::<api::Vpc>();
    generator.subschema_for::<api::VpcSubnet>();
    generator.subschema_for::<api::SecurityGroup>();
    generator.subschema_for::<api::InstanceProfile>();
    generator.subschema_for::<api::ClusterPreview>();
    generator.subschema_for::<api::Meta>();
    generator.subschema_for::<api::ErrorBody>();
    generator.subschema_for::<api::Organization>();
    generator.subschema_for::<api::Team>();
    generator.subschema_for::<api::Grant>();
    generator.subschema_for::<api::User>();
    generator.subschema_for::<api::ApiKey>();
    generator.subschema_for::<api::Bundle>();
    generator.subschema_for::<api::BundleCreated>();
    generator.subschema_for::<api::LdapSettings>();
    generator.subschema_for::<api::LdapSyncReport>();
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    // The document's name for the error body.
    if let Some(error) = schemas.remove("ErrorBody") {
        schemas.insert("Error".into(), error);
    }
    schemas
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in every_route() {
        let endpoint = endpoint(&route);
        let (tag, ops) = operations(&route);
        let path = endpoint.template;
        let mut item = Map::new();
        for op in &ops {
            let mut operation = operation(path, op, endpoint.auth, tag);
            operation["x-access"] = json!(access_text(&route, op.method));
            item.insert(op.method.into(), operation);
        }
        if endpoint.namespaced
            && let Some(with_namespace) = namespaced(path)
        {
            let mut namespaced_item = Map::new();
            for op in &ops {
                namespaced_item.insert(
                    op.method.into(),
                    operation(&with_namespace, op, endpoint.auth, tag),
                );
            }
            paths.insert(with_namespace, Value::Object(namespaced_item));
        }
        paths.insert(path.into(), Value::Object(item));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Flotilla API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The Docker Cloud API v1 (infra, audit) as served by Flotilla, plus the node agent API. \
                Every REST path is also served without its trailing slash. Asynchronous calls answer 202 \
                with the header X-DockerCloud-Action-URI. Lists take limit, offset and Tastypie-style filters \
                (field, field__startswith, field__gte, field__lte)."
        },
        "servers": [{"url": "/"}],
        "security": [{"basic": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic",
                    "description": "user name and API key (or password)"},
                "agentToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "TutumAgentToken <token>: a batch registration token or a node credential"},
                "session": {"type": "apiKey", "in": "cookie", "name": "flotilla_session",
                    "description": "the dashboard's session cookie (POST /session); every API route also accepts it, with the session's X-CSRF-Token header on changes"}
            },
            "schemas": schemas(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{concrete, parse_path, template};

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let text = serde_json::to_string(&document()).expect("serializes");
        let document: Value = serde_json::from_str(&text).expect("the document is JSON");
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3."))
        );
        assert!(document["info"]["title"].is_string() && document["info"]["version"].is_string());
        let paths = document["paths"].as_object().expect("paths");
        let schemes = &document["components"]["securitySchemes"];
        assert_eq!(schemes["basic"]["scheme"], "basic");
        assert_eq!(schemes["agentToken"]["name"], "Authorization");
        let schemas = &document["components"]["schemas"];
        assert_eq!(schemas["Error"]["required"], json!(["error"]));
        for name in [
            "ListEnvelope",
            "NodeClusterCreate",
            "NodeClusterPatch",
            "NodePatch",
        ] {
            assert!(schemas[name].is_object(), "{name}");
        }
        // The response objects are the wire types': every field the server renders is
        // a property, with the wire type's JSON type, and nested types are referenced.
        let node = &schemas["Node"];
        for field in [
            "uuid",
            "state",
            "docker_version",
            "private_ips",
            "tags",
            "cpu",
        ] {
            assert!(
                node["properties"][field].is_object(),
                "Node.{field}: {node:#}"
            );
        }
        assert_eq!(
            node["properties"]["private_ips"]["items"]["$ref"],
            "#/components/schemas/PrivateIp"
        );
        assert_eq!(
            schemas["NodeCluster"]["properties"]["current_num_nodes"]["type"],
            "integer"
        );
        assert!(
            schemas["Meta"]["required"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("total_count")))
        );
        // Every document path is a route, and that route's template (namespace removed).
        let mut seen = std::collections::BTreeSet::new();
        for (path, item) in paths {
            let parsed = parse_path(&concrete(path))
                .unwrap_or_else(|| panic!("{path} is in the document but not a route"));
            let (expected, methods) = template(&parsed.route);
            assert_eq!(path.replace("/{namespace}", ""), expected, "{path}");
            assert_eq!(
                parsed.namespace.is_some(),
                path.contains("{namespace}"),
                "{path}"
            );
            let listed: Vec<&str> = item
                .as_object()
                .expect("item")
                .keys()
                .map(String::as_str)
                .collect();
            let mut wanted = methods.to_vec();
            wanted.sort_unstable();
            let mut listed = listed;
            listed.sort_unstable();
            assert_eq!(listed, wanted, "{path}");
            seen.insert(expected);
        }
        // Every route is in the document, and the parser agrees with the route table on its
        // path and on whether it takes a namespace.
        let every_route = every_route();
        for route in &every_route {
            let (path, _) = template(route);
            assert!(
                seen.contains(path),
                "{route:?} ({path}) is not in the document"
            );
            assert_eq!(
                parse_path(&concrete(path)).map(|p| p.route).as_ref(),
                Some(route)
            );
            let with_namespace = namespaced(path).map(|p| parse_path(&concrete(&p)));
            assert_eq!(
                with_namespace.flatten().map(|p| p.route).as_ref() == Some(route),
                endpoint(route).namespaced,
                "{route:?}: the parser and the table disagree on its namespace"
            );
        }
        assert_eq!(seen.len(), every_route.len(), "one template per route");
        assert_eq!(
            document["paths"]["/_ping"]["get"]["security"],
            json!([]),
            "ping needs no auth"
        );
    }
}
