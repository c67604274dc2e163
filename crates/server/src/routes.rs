//! The route table of the HTTP edge: every path the server serves, as a closed [`Route`]
//! enum, and for each its path template, methods, authentication and namespacing, declared
//! once ([`endpoint`]). The dispatcher (`http`: parsing, 405s, which handler), the
//! websockets (`stream`), the agent API's handlers (`agent_api`), the OpenAPI document's
//! paths (`openapi`) and the security tests (`tests/it/security.rs`) all derive from it; it
//! imports nothing of the crate.
//!
//! Design decisions:
//! * Routing is a hand-written parse of the path into a closed [`Route`] enum rather than
//!   an axum route table. The contract asks for every REST path with and without its
//!   trailing slash (no redirects: a 301 breaks a PATCH), with and without a namespace
//!   segment, and for 405 on a known path with the wrong method; a plain `match` over path
//!   segments states all of that in one place and is unit-tested without a server.
//! * [`endpoint`] is exhaustive on purpose: a new variant does not compile until its path
//!   template, methods and authentication are listed; `openapi`'s tests check that the
//!   parser agrees with every template and namespace flag.

use axum::http::Method;
use flotilla_api::Role;

/// Where the OpenAPI document is served (`openapi`).
pub const OPENAPI_PATH: &str = "/api/openapi.json";

/// The dashboard's script and style sheet (`dashboard`).
pub const DASHBOARD_SCRIPT: &str = "/dashboard.js";
pub const DASHBOARD_STYLE: &str = "/dashboard.css";
/// The dashboard's login, session and logout (`session`).
pub const SESSION_PATH: &str = "/session";

/// Largest page a client may ask for.
pub const MAX_LIMIT: u64 = 1000;

/// Every path the API serves, independent of the method. `Route::iter()` (strum) yields one
/// value of every variant (with empty parameters), so tests reach every route, including ones
/// added later.
#[derive(Debug, Clone, PartialEq, Eq, strum::EnumIter)]
pub enum Route {
    Ping,
    Providers,
    Provider(String),
    /// `provider/<name>/credentials/`: GET whether keys are linked, PUT links new keys.
    ProviderCredentials(String),
    Regions,
    Region(String, String),
    /// `region/{provider}/{name}/vpc/`: the region's VPCs (the launch wizard).
    RegionVpcs(String, String),
    /// `region/{provider}/{name}/subnet/`: the region's subnets.
    RegionSubnets(String, String),
    /// `region/{provider}/{name}/securitygroup/`: the region's security groups.
    RegionSecurityGroups(String, String),
    /// `provider/{name}/instanceprofile/`: the account's IAM instance profiles.
    InstanceProfiles(String),
    AvailabilityZones,
    AvailabilityZone(String, String, String),
    NodeTypes,
    NodeType(String, String),
    Clusters,
    Cluster(String),
    ClusterDeploy(String),
    /// `POST nodecluster/preview/`: a create checked, answered with its placement.
    ClusterPreview,
    Nodes,
    Node(String),
    NodeHealthCheck(String),
    /// `swarm/`: Docker Swarm clusters (a swarm's managers and workers are node clusters).
    Swarms,
    Swarm(String),
    /// `/metrics`: the Prometheus text exposition.
    Metrics,
    /// `/readyz`: each health check behind `/_ping`, with its detail.
    Readyz,
    /// `/services/{id}`: a swarm service's health (seed 004's monitoring endpoint).
    SwarmService(String),
    Actions,
    Action(String),
    ActionCancel(String),
    ActionRetry(String),
    Services,
    /// `POST token/`: a bring-your-own-node token.
    Token,
    /// The events websocket (`stream`).
    Events,
    /// An action's logs websocket (`stream`).
    ActionLogs(String),
    /// `/api/agent/v1/node/`: agent registration (served by `agent_api`).
    AgentNodes,
    AgentNode(String),
    AgentNodePing(String),
    /// `node/{uuid}/dockerproxy/`: a swarm manager's proxy certificate (client bundles).
    AgentNodeDockerProxy(String),
    /// `node/{uuid}/bundlecheck/`: who a client certificate is and its role on the swarm.
    AgentNodeBundleCheck(String),
    /// `/download/flotilla`: the server's own binary, for nodes (no auth).
    Download,
    /// `/api/openapi.json`: the OpenAPI document of every route (`openapi`).
    OpenApi,
    /// `/`: the web dashboard's page (`dashboard`; public: it holds no data).
    Dashboard,
    /// `/dashboard.js`: the dashboard's script.
    DashboardScript,
    /// `/dashboard.css`: the dashboard's style sheet.
    DashboardStyle,
    /// `/session`: the dashboard's login (POST), its session (GET) and logout (DELETE)
    /// (`session`).
    Session,
    /// `/api/access/v1/org/`: organizations (issue #15).
    Orgs,
    Org(String),
    /// `org/{org}/team/`: an organization's teams.
    Teams(String),
    /// `org/{org}/team/{team}/`: a team; `PATCH` adds and removes members.
    Team(String, String),
    /// `org/{org}/grant/`: an organization's grants of roles to teams.
    Grants(String),
    Grant(String, String),
    /// `/api/access/v1/user/`: users.
    Users,
    User(String),
    /// `user/{name}/apikey/`: a user's API keys.
    ApiKeys(String),
    ApiKey(String, String),
    /// `user/{name}/bundle/`: a user's client bundles for the `docker` CLI.
    Bundles(String),
    /// `user/{name}/bundle/{id}/`: one bundle; `DELETE` revokes it.
    Bundle(String, String),
    /// `/api/access/v1/ldap/`: the LDAP / Active Directory settings (`GET`, `PUT`).
    Ldap,
    /// `ldap/sync/`: `POST` syncs the directory's users and groups now.
    LdapSync,
}

/// A parsed path: the route and the namespace segment, if the path had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub route: Route,
    pub namespace: Option<String>,
}

/// Parses a request path. `None` for anything the API does not serve.
pub fn parse_path(path: &str) -> Option<Parsed> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed == "/download/flotilla" {
        return Some(Parsed {
            route: Route::Download,
            namespace: None,
        });
    }
    if trimmed == OPENAPI_PATH {
        return Some(Parsed {
            route: Route::OpenApi,
            namespace: None,
        });
    }
    if trimmed == "/metrics" {
        return Some(Parsed {
            route: Route::Metrics,
            namespace: None,
        });
    }
    if trimmed == "/readyz" {
        return Some(Parsed {
            route: Route::Readyz,
            namespace: None,
        });
    }
    if let Some(id) = trimmed.strip_prefix("/services/")
        && !id.is_empty()
        && !id.contains('/')
    {
        return Some(Parsed {
            route: Route::SwarmService(id.to_owned()),
            namespace: None,
        });
    }
    let fixed = match path {
        "/" => Some(Route::Dashboard),
        DASHBOARD_SCRIPT => Some(Route::DashboardScript),
        DASHBOARD_STYLE => Some(Route::DashboardStyle),
        _ if trimmed == SESSION_PATH => Some(Route::Session),
        _ => None,
    };
    if let Some(route) = fixed {
        return Some(Parsed {
            route,
            namespace: None,
        });
    }
    if trimmed == "/_ping" {
        return Some(Parsed {
            route: Route::Ping,
            namespace: None,
        });
    }
    let rest = trimmed.strip_prefix("/api/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let (subsystem, rest) = match segments.as_slice() {
        [subsystem, "v1", rest @ ..] => (*subsystem, rest),
        _ => return None,
    };
    // Namespaced resources may be preceded by one namespace segment.
    let namespaced = match subsystem {
        "infra" => &["nodecluster", "node", "token", "swarm"][..],
        "audit" => &["events"][..],
        "app" => &["service"][..],
        _ => &[][..],
    };
    let (namespace, rest) = match rest {
        [ns, resource, ..] if namespaced.contains(resource) && !namespaced.contains(ns) => {
            (Some((*ns).to_owned()), &rest[1..])
        }
        // Action REST is never namespaced, but its logs websocket is (§2.2).
        [ns, "action", _, "logs"] if subsystem == "audit" => (Some((*ns).to_owned()), &rest[1..]),
        _ => (None, rest),
    };
    let s = |x: &&str| (*x).to_owned();
    let route = match (subsystem, rest) {
        ("infra", ["provider"]) => Route::Providers,
        ("infra", ["provider", name]) => Route::Provider(s(name)),
        ("infra", ["provider", name, "credentials"]) => Route::ProviderCredentials(s(name)),
        ("infra", ["region"]) => Route::Regions,
        ("infra", ["region", p, name]) => Route::Region(s(p), s(name)),
        ("infra", ["region", p, name, "vpc"]) => Route::RegionVpcs(s(p), s(name)),
        ("infra", ["region", p, name, "subnet"]) => Route::RegionSubnets(s(p), s(name)),
        ("infra", ["region", p, name, "securitygroup"]) => {
            Route::RegionSecurityGroups(s(p), s(name))
        }
        ("infra", ["provider", name, "instanceprofile"]) => Route::InstanceProfiles(s(name)),
        ("infra", ["az"]) => Route::AvailabilityZones,
        ("infra", ["az", p, r, name]) => Route::AvailabilityZone(s(p), s(r), s(name)),
        ("infra", ["nodetype"]) => Route::NodeTypes,
        ("infra", ["nodetype", p, name]) => Route::NodeType(s(p), s(name)),
        ("infra", ["nodecluster"]) => Route::Clusters,
        ("infra", ["nodecluster", "preview"]) => Route::ClusterPreview,
        ("infra", ["nodecluster", uuid]) => Route::Cluster(s(uuid)),
        ("infra", ["nodecluster", uuid, "deploy"]) => Route::ClusterDeploy(s(uuid)),
        ("infra", ["node"]) => Route::Nodes,
        ("infra", ["node", uuid]) => Route::Node(s(uuid)),
        ("infra", ["node", uuid, "health-check"]) => Route::NodeHealthCheck(s(uuid)),
        ("infra", ["swarm"]) => Route::Swarms,
        ("infra", ["swarm", uuid]) => Route::Swarm(s(uuid)),
        ("audit", ["action"]) => Route::Actions,
        ("audit", ["action", uuid]) => Route::Action(s(uuid)),
        ("audit", ["action", uuid, "cancel"]) => Route::ActionCancel(s(uuid)),
        ("audit", ["action", uuid, "retry"]) => Route::ActionRetry(s(uuid)),
        ("app", ["service"]) => Route::Services,
        ("infra", ["token"]) => Route::Token,
        ("audit", ["events"]) => Route::Events,
        ("audit", ["action", uuid, "logs"]) => Route::ActionLogs(s(uuid)),
        ("agent", ["node"]) => Route::AgentNodes,
        ("agent", ["node", uuid]) => Route::AgentNode(s(uuid)),
        ("agent", ["node", uuid, "ping"]) => Route::AgentNodePing(s(uuid)),
        ("agent", ["node", uuid, "dockerproxy"]) => Route::AgentNodeDockerProxy(s(uuid)),
        ("agent", ["node", uuid, "bundlecheck"]) => Route::AgentNodeBundleCheck(s(uuid)),
        ("access", ["org"]) => Route::Orgs,
        ("access", ["org", org]) => Route::Org(s(org)),
        ("access", ["org", org, "team"]) => Route::Teams(s(org)),
        ("access", ["org", org, "team", team]) => Route::Team(s(org), s(team)),
        ("access", ["org", org, "grant"]) => Route::Grants(s(org)),
        ("access", ["org", org, "grant", id]) => Route::Grant(s(org), s(id)),
        ("access", ["user"]) => Route::Users,
        ("access", ["user", name]) => Route::User(s(name)),
        ("access", ["user", name, "apikey"]) => Route::ApiKeys(s(name)),
        ("access", ["user", name, "apikey", key]) => Route::ApiKey(s(name), s(key)),
        ("access", ["user", name, "bundle"]) => Route::Bundles(s(name)),
        ("access", ["user", name, "bundle", id]) => Route::Bundle(s(name), s(id)),
        ("access", ["ldap"]) => Route::Ldap,
        ("access", ["ldap", "sync"]) => Route::LdapSync,
        _ => return None,
    };
    Some(Parsed { route, namespace })
}

/// How a route authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No credentials: `/_ping`, and the agent binary (`/download/flotilla`), which holds
    /// no secret and is fetched by nodes before they hold any credential.
    Public,
    /// HTTP Basic: a user and an API key (or password).
    Basic,
    /// `TutumAgentToken`: a batch registration token or a node credential (`agent_api`).
    Agent,
    /// The dashboard's login: a user and API key in the JSON body (POST, through the login
    /// throttle), then the session cookie (GET, DELETE) (`session`).
    Login,
}

/// One endpoint as the route table declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The path template without namespace, with its trailing slash as clients send it.
    pub template: &'static str,
    /// The methods it answers (lower case, as in the OpenAPI document); any other is a 405.
    pub methods: &'static [&'static str],
    pub auth: Auth,
    /// Also served with a namespace segment (`/api/<sub>/v1/{namespace}/...`).
    pub namespaced: bool,
}

/// The route table: every route's path template, methods, authentication and namespacing,
/// declared once. The dispatcher's 405s ([`allows`]), the choice of handler
/// ([`is_agent_route`]), the OpenAPI document's paths and the security tests all derive
/// from it. Exhaustive on purpose: a new `Route` variant does not compile until it is
/// listed here.
pub fn endpoint(route: &Route) -> Endpoint {
    let (template, methods, auth, namespaced): (_, &'static [&'static str], _, _) = match route {
        Route::Ping => ("/_ping", &["get", "head"], Auth::Public, false),
        Route::OpenApi => (OPENAPI_PATH, &["get"], Auth::Basic, false),
        Route::Download => ("/download/flotilla", &["get", "head"], Auth::Public, false),
        Route::Dashboard => ("/", &["get", "head"], Auth::Public, false),
        Route::DashboardScript => (DASHBOARD_SCRIPT, &["get", "head"], Auth::Public, false),
        Route::DashboardStyle => (DASHBOARD_STYLE, &["get", "head"], Auth::Public, false),
        Route::Session => (SESSION_PATH, &["get", "post", "delete"], Auth::Login, false),
        Route::Providers => ("/api/infra/v1/provider/", &["get"], Auth::Basic, false),
        Route::Provider(_) => (
            "/api/infra/v1/provider/{name}/",
            &["get"],
            Auth::Basic,
            false,
        ),
        Route::ProviderCredentials(_) => (
            "/api/infra/v1/provider/{name}/credentials/",
            &["get", "put"],
            Auth::Basic,
            false,
        ),
        Route::Regions => ("/api/infra/v1/region/", &["get"], Auth::Basic, false),
        Route::Region(..) => (
            "/api/infra/v1/region/{provider}/{name}/",
            &["get"],
            Auth::Basic,
            false,
        ),
        Route::RegionVpcs(..) => (
            "/api/infra/v1/region/{provider}/{name}/vpc/",
            &["get"],
            Auth::Basic,
            false,
        ),
        Route::RegionSubnets(..) => (
            "/api/infra/v1/region/{provider}/{name}/subnet/",
            &["get"],
            Auth::Basic,
            false,
        ),
        Route::RegionSecurityGroups(..) => (
            "/api/infra/v1/region/{provider}/{name}/securitygroup/",
            &["get"],
            Auth::Basic,
            false,
        ),
        Route::InstanceProfiles(_) => (
            "/api/infra/v1/provider/{name}/instanceprofile/",
            &["get"],
            Auth::Basic,
            false,
        ),
        Route::AvailabilityZones => ("/api/infra/v1/az/", &["get"], Auth::Basic, false),
        Route::AvailabilityZone(..) => (
            "/api/infra/v1/az/{provider}/{region}/{name}/",
            &["get"],
            Auth::Basic,
            false,
        ),
        Route::NodeTypes => ("/api/infra/v1/nodetype/", &["get"], Auth::Basic, false),
        Route::NodeType(..) => (
            "/api/infra/v1/nodetype/{provider}/{name}/",
            &["get"],
            Auth::Basic,
            false,
        ),
        Route::Clusters => (
            "/api/infra/v1/nodecluster/",
            &["get", "post"],
            Auth::Basic,
            true,
        ),
        Route::Cluster(_) => (
            "/api/infra/v1/nodecluster/{uuid}/",
            &["get", "patch", "delete"],
            Auth::Basic,
            true,
        ),
        Route::ClusterDeploy(_) => (
            "/api/infra/v1/nodecluster/{uuid}/deploy/",
            &["post"],
            Auth::Basic,
            true,
        ),
        Route::ClusterPreview => (
            "/api/infra/v1/nodecluster/preview/",
            &["post"],
            Auth::Basic,
            true,
        ),
        Route::Nodes => ("/api/infra/v1/node/", &["get"], Auth::Basic, true),
        Route::Node(_) => (
            "/api/infra/v1/node/{uuid}/",
            &["get", "patch", "delete"],
            Auth::Basic,
            true,
        ),
        Route::NodeHealthCheck(_) => (
            "/api/infra/v1/node/{uuid}/health-check/",
            &["post"],
            Auth::Basic,
            true,
        ),
        Route::Swarms => ("/api/infra/v1/swarm/", &["get", "post"], Auth::Basic, true),
        Route::Swarm(_) => (
            "/api/infra/v1/swarm/{uuid}/",
            &["get", "patch", "delete"],
            Auth::Basic,
            true,
        ),
        Route::SwarmService(_) => ("/services/{id}", &["get"], Auth::Basic, false),
        Route::Metrics => ("/metrics", &["get"], Auth::Basic, false),
        Route::Readyz => ("/readyz", &["get"], Auth::Basic, false),
        Route::Token => ("/api/infra/v1/token/", &["post"], Auth::Basic, true),
        Route::Actions => ("/api/audit/v1/action/", &["get"], Auth::Basic, false),
        Route::Action(_) => ("/api/audit/v1/action/{uuid}/", &["get"], Auth::Basic, false),
        Route::ActionCancel(_) => (
            "/api/audit/v1/action/{uuid}/cancel/",
            &["post"],
            Auth::Basic,
            false,
        ),
        Route::ActionRetry(_) => (
            "/api/audit/v1/action/{uuid}/retry/",
            &["post"],
            Auth::Basic,
            false,
        ),
        Route::ActionLogs(_) => (
            "/api/audit/v1/action/{uuid}/logs/",
            &["get"],
            Auth::Basic,
            true,
        ),
        Route::Events => ("/api/audit/v1/events", &["get"], Auth::Basic, true),
        Route::Services => ("/api/app/v1/service/", &["get"], Auth::Basic, true),
        Route::AgentNodes => ("/api/agent/v1/node/", &["post"], Auth::Agent, false),
        Route::AgentNode(_) => (
            "/api/agent/v1/node/{uuid}/",
            &["get", "patch"],
            Auth::Agent,
            false,
        ),
        Route::AgentNodePing(_) => (
            "/api/agent/v1/node/{uuid}/ping/",
            &["post"],
            Auth::Agent,
            false,
        ),
        Route::AgentNodeDockerProxy(_) => (
            "/api/agent/v1/node/{uuid}/dockerproxy/",
            &["post"],
            Auth::Agent,
            false,
        ),
        Route::AgentNodeBundleCheck(_) => (
            "/api/agent/v1/node/{uuid}/bundlecheck/",
            &["post"],
            Auth::Agent,
            false,
        ),
        Route::Orgs => ("/api/access/v1/org/", &["get", "post"], Auth::Basic, false),
        Route::Org(_) => (
            "/api/access/v1/org/{org}/",
            &["get", "delete"],
            Auth::Basic,
            false,
        ),
        Route::Teams(_) => (
            "/api/access/v1/org/{org}/team/",
            &["get", "post"],
            Auth::Basic,
            false,
        ),
        Route::Team(..) => (
            "/api/access/v1/org/{org}/team/{team}/",
            &["get", "patch", "delete"],
            Auth::Basic,
            false,
        ),
        Route::Grants(_) => (
            "/api/access/v1/org/{org}/grant/",
            &["get", "post"],
            Auth::Basic,
            false,
        ),
        Route::Grant(..) => (
            "/api/access/v1/org/{org}/grant/{id}/",
            &["delete"],
            Auth::Basic,
            false,
        ),
        Route::Users => ("/api/access/v1/user/", &["get", "post"], Auth::Basic, false),
        Route::User(_) => (
            "/api/access/v1/user/{name}/",
            &["get", "patch", "delete"],
            Auth::Basic,
            false,
        ),
        Route::ApiKeys(_) => (
            "/api/access/v1/user/{name}/apikey/",
            &["get", "post"],
            Auth::Basic,
            false,
        ),
        Route::ApiKey(..) => (
            "/api/access/v1/user/{name}/apikey/{key}/",
            &["delete"],
            Auth::Basic,
            false,
        ),
        Route::Bundles(_) => (
            "/api/access/v1/user/{name}/bundle/",
            &["get", "post"],
            Auth::Basic,
            false,
        ),
        Route::Bundle(..) => (
            "/api/access/v1/user/{name}/bundle/{id}/",
            &["get", "delete"],
            Auth::Basic,
            false,
        ),
        Route::Ldap => ("/api/access/v1/ldap/", &["get", "put"], Auth::Basic, false),
        Route::LdapSync => ("/api/access/v1/ldap/sync/", &["post"], Auth::Basic, false),
    };
    Endpoint {
        template,
        methods,
        auth,
        namespaced,
    }
}

/// What a signed-in caller needs for a request, beyond authentication (issue #15).
/// The `authz` module decides it; the dispatcher asks before any handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any signed-in user: nothing an organization owns is read or changed (the catalogue,
    /// the OpenAPI document), or the route is not a user route at all (public, agent,
    /// login).
    Anyone,
    /// A list: answered with only what the caller may view (never a refusal).
    Visible,
    /// This role on the resource the path names (a node cluster, a node, a swarm, or an
    /// action's object): 404 when the caller may not view it, exactly as if it did not
    /// exist; 403 naming the role when the caller may view it but not do this.
    Resource(Role),
    /// This role on all of the organization a create goes to (the namespace segment, else
    /// the caller's one organization, else `default` for the server administrator).
    Create(Role),
    /// This role on all of the organization the path names (its teams and grants).
    Org(Role),
    /// The user the path names, or the server administrator (a user's own keys and
    /// password); anyone else gets 404, as if the user did not exist.
    SelfOrAdmin,
    /// The server administrator only (installation-wide: linking the AWS account, users,
    /// organizations, metrics, bring-your-own-node tokens).
    ServerAdmin,
}

/// The access rule of every route and method, declared once next to the route table: the
/// dispatcher enforces it (the `authz` module), the OpenAPI document states it and the security
/// test enumerates it. Exhaustive like [`endpoint`]; a method the route does not serve is
/// [`Access::Anyone`] (it is a 405 anyway).
pub fn access(route: &Route, method: &Method) -> Access {
    use Access::*;
    let read = *method == Method::GET || *method == Method::HEAD;
    let delete = *method == Method::DELETE;
    match route {
        Route::Ping
        | Route::Download
        | Route::Dashboard
        | Route::DashboardScript
        | Route::DashboardStyle
        | Route::Session
        | Route::AgentNodes
        | Route::AgentNode(_)
        | Route::AgentNodePing(_)
        | Route::AgentNodeDockerProxy(_)
        | Route::AgentNodeBundleCheck(_)
        | Route::OpenApi
        | Route::Providers
        | Route::Provider(_)
        | Route::Regions
        | Route::Region(..)
        | Route::AvailabilityZones
        | Route::AvailabilityZone(..)
        | Route::NodeTypes
        | Route::NodeType(..) => Anyone,
        Route::ProviderCredentials(_) if read => Anyone,
        Route::ProviderCredentials(_) => ServerAdmin,
        Route::Metrics | Route::Readyz | Route::Token => ServerAdmin,
        // The linked account's networks and the preview of a launch: for whoever may
        // launch into the organization.
        Route::RegionVpcs(..)
        | Route::RegionSubnets(..)
        | Route::RegionSecurityGroups(..)
        | Route::InstanceProfiles(..)
        | Route::ClusterPreview => Create(Role::Manage),
        Route::Clusters | Route::Swarms if read => Visible,
        Route::Clusters | Route::Swarms => Create(Role::Manage),
        Route::Nodes | Route::Actions | Route::Events | Route::Services => Visible,
        Route::SwarmService(_) => Visible,
        Route::Cluster(_) | Route::Swarm(_) | Route::Node(_) if read => Resource(Role::View),
        Route::Cluster(_) | Route::Swarm(_) if delete => Resource(Role::Manage),
        Route::Cluster(_) | Route::Swarm(_) | Route::Node(_) => Resource(Role::Operate),
        Route::ClusterDeploy(_) | Route::NodeHealthCheck(_) => Resource(Role::Operate),
        Route::Action(_) | Route::ActionLogs(_) => Resource(Role::View),
        Route::ActionCancel(_) | Route::ActionRetry(_) => Resource(Role::Operate),
        Route::Orgs if read => Visible,
        Route::Orgs => ServerAdmin,
        Route::Org(_) if delete => ServerAdmin,
        Route::Org(_) | Route::Teams(_) | Route::Team(..) | Route::Grants(_) if read => {
            Org(Role::View)
        }
        Route::Org(_) | Route::Teams(_) | Route::Team(..) | Route::Grants(_) | Route::Grant(..) => {
            Org(Role::Admin)
        }
        Route::Users if read => Visible,
        Route::Users => ServerAdmin,
        Route::User(_) if delete => ServerAdmin,
        // A bundle names its user only; what it may do on a swarm is the user's role there,
        // decided per request by the proxy (`flotilla_core::docker_access`).
        Route::User(_)
        | Route::ApiKeys(_)
        | Route::ApiKey(..)
        | Route::Bundles(_)
        | Route::Bundle(..) => SelfOrAdmin,
        Route::Ldap | Route::LdapSync => ServerAdmin,
    }
}

/// Whether `route` answers `method` (else the answer is a 405).
pub fn allows(route: &Route, method: &Method) -> bool {
    endpoint(route)
        .methods
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method.as_str()))
}

/// The routes `agent_api` serves: the agent's own (its token, never Basic) and the public
/// agent binary.
pub fn is_agent_route(route: &Route) -> bool {
    endpoint(route).auth == Auth::Agent || *route == Route::Download
}

/// A route's path template (without namespace) and methods (public for the integration
/// tests, which send requests to every route).
pub fn template(route: &Route) -> (&'static str, &'static [&'static str]) {
    let endpoint = endpoint(route);
    (endpoint.template, endpoint.methods)
}

/// One route of every variant, its parameters filled in from its template
/// (`Route::iter()` yields variants with empty parameters).
pub fn every_route() -> Vec<Route> {
    <Route as strum::IntoEnumIterator>::iter()
        .map(|route| {
            parse_path(&concrete(endpoint(&route).template))
                .map(|p| p.route)
                .unwrap_or(route)
        })
        .collect()
}

/// A concrete path for a template: every `{param}` becomes `x`.
pub fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "x"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Option<Route> {
        parse_path(path).map(|p| p.route)
    }

    #[test]
    fn paths_parse_with_and_without_slash_and_namespace() {
        let uuid = "5516c8b6-3d4b-4a52-9a1e-0f8f2d7b9c10";
        for path in ["/api/infra/v1/nodecluster/", "/api/infra/v1/nodecluster"] {
            assert_eq!(route(path), Some(Route::Clusters));
        }
        let namespaced = parse_path(&format!("/api/infra/v1/myorg/nodecluster/{uuid}/deploy/"))
            .expect("namespaced");
        assert_eq!(namespaced.route, Route::ClusterDeploy(uuid.into()));
        assert_eq!(namespaced.namespace.as_deref(), Some("myorg"));
        assert_eq!(
            route("/api/infra/v1/region/aws/us-east-1/"),
            Some(Route::Region("aws".into(), "us-east-1".into()))
        );
        assert_eq!(
            route("/api/infra/v1/az/aws/us-east-1/us-east-1a"),
            Some(Route::AvailabilityZone(
                "aws".into(),
                "us-east-1".into(),
                "us-east-1a".into()
            ))
        );
        assert_eq!(
            route("/api/audit/v1/action/x/cancel/"),
            Some(Route::ActionCancel("x".into()))
        );
        assert_eq!(route("/api/app/v1/me/service/"), Some(Route::Services));
        assert_eq!(route("/_ping"), Some(Route::Ping));
        for path in ["/api/audit/v1/events", "/api/audit/v1/events/"] {
            assert_eq!(route(path), Some(Route::Events));
        }
        let events = parse_path("/api/audit/v1/me/events").expect("namespaced events");
        assert_eq!(
            (events.route, events.namespace.as_deref()),
            (Route::Events, Some("me"))
        );
        let logs = parse_path("/api/audit/v1/me/action/x/logs/").expect("namespaced logs");
        assert_eq!(
            (logs.route, logs.namespace.as_deref()),
            (Route::ActionLogs("x".into()), Some("me"))
        );
        assert_eq!(
            route("/api/audit/v1/action/x/logs/"),
            Some(Route::ActionLogs("x".into()))
        );
        assert_eq!(route("/api/infra/v1/token/"), Some(Route::Token));
        assert_eq!(route("/api/infra/v1/me/token"), Some(Route::Token));
        assert_eq!(route("/api/agent/v1/node/"), Some(Route::AgentNodes));
        assert_eq!(
            route("/api/agent/v1/node/x/ping/"),
            Some(Route::AgentNodePing("x".into()))
        );
        assert_eq!(route("/download/flotilla"), Some(Route::Download));
        assert_eq!(route("/"), Some(Route::Dashboard));
        assert_eq!(route("/dashboard.js"), Some(Route::DashboardScript));
        assert_eq!(route("/session/"), Some(Route::Session));
        assert_eq!(
            route("/api/infra/v1/region/aws/us-east-1/subnet/"),
            Some(Route::RegionSubnets("aws".into(), "us-east-1".into()))
        );
        assert_eq!(
            route("/api/infra/v1/provider/aws/instanceprofile"),
            Some(Route::InstanceProfiles("aws".into()))
        );
        let preview = parse_path("/api/infra/v1/admin/nodecluster/preview/").expect("preview");
        assert_eq!(
            (preview.route, preview.namespace.as_deref()),
            (Route::ClusterPreview, Some("admin"))
        );
    }

    #[test]
    fn unknown_paths_and_misplaced_namespaces_are_not_routes() {
        for path in [
            "//",
            "/dashboard.js/",
            "/api/",
            "/api/infra/v2/nodecluster/",
            "/api/infra/v1/myorg/provider/",
            "/api/audit/v1/myorg/action/",
            "/api/infra/v1//nodecluster/",
            "/api/infra/v1/nodecluster/x/y/",
            "/api/infra/v1/a/b/nodecluster/",
        ] {
            assert_eq!(route(path), None, "{path}");
        }
    }
}
