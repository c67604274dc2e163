//! The route table of the HTTP edge: every path the server serves, as a closed [`Route`]
//! enum, with the methods each answers and its path template. The dispatcher (`http`), the
//! websockets (`stream`), the agent API's handlers (`agent_api`) and the OpenAPI document
//! (`openapi`) all name routes through this module; it imports nothing of the crate.
//!
//! Design decisions:
//! * Routing is a hand-written parse of the path into a closed [`Route`] enum rather than
//!   an axum route table. The contract asks for every REST path with and without its
//!   trailing slash (no redirects: a 301 breaks a PATCH), with and without a namespace
//!   segment, and for 405 on a known path with the wrong method; a plain `match` over path
//!   segments states all of that in one place and is unit-tested without a server.
//! * [`template`] is exhaustive on purpose: a new variant does not compile until its path
//!   template and methods are listed, and `openapi`'s tests check the document against it.

use axum::http::Method;

/// Where the OpenAPI document is served (`openapi`).
pub const OPENAPI_PATH: &str = "/api/openapi.json";

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
    AvailabilityZones,
    AvailabilityZone(String, String, String),
    NodeTypes,
    NodeType(String, String),
    Clusters,
    Cluster(String),
    ClusterDeploy(String),
    Nodes,
    Node(String),
    NodeHealthCheck(String),
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
    /// `/download/flotilla`: the server's own binary, for nodes (no auth).
    Download,
    /// `/api/openapi.json`: the OpenAPI document of every route (`openapi`).
    OpenApi,
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
        "infra" => &["nodecluster", "node", "token"][..],
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
        ("infra", ["az"]) => Route::AvailabilityZones,
        ("infra", ["az", p, r, name]) => Route::AvailabilityZone(s(p), s(r), s(name)),
        ("infra", ["nodetype"]) => Route::NodeTypes,
        ("infra", ["nodetype", p, name]) => Route::NodeType(s(p), s(name)),
        ("infra", ["nodecluster"]) => Route::Clusters,
        ("infra", ["nodecluster", uuid]) => Route::Cluster(s(uuid)),
        ("infra", ["nodecluster", uuid, "deploy"]) => Route::ClusterDeploy(s(uuid)),
        ("infra", ["node"]) => Route::Nodes,
        ("infra", ["node", uuid]) => Route::Node(s(uuid)),
        ("infra", ["node", uuid, "health-check"]) => Route::NodeHealthCheck(s(uuid)),
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
        _ => return None,
    };
    Some(Parsed { route, namespace })
}

/// The methods a route answers.
pub fn allowed_methods(route: &Route) -> &'static [Method] {
    match route {
        Route::Ping => &[Method::GET, Method::HEAD],
        Route::Clusters => &[Method::GET, Method::POST],
        Route::ProviderCredentials(_) => &[Method::GET, Method::PUT],
        Route::Cluster(_) | Route::Node(_) => &[Method::GET, Method::PATCH, Method::DELETE],
        Route::ClusterDeploy(_)
        | Route::NodeHealthCheck(_)
        | Route::ActionCancel(_)
        | Route::ActionRetry(_)
        | Route::Token => &[Method::POST],
        _ => &[Method::GET],
    }
}

/// The agent's routes: served by `agent_api`, with the agent's token or none, never Basic.
pub fn is_agent_route(route: &Route) -> bool {
    matches!(
        route,
        Route::AgentNodes | Route::AgentNode(_) | Route::AgentNodePing(_) | Route::Download
    )
}

/// Every route's path template (without namespace) and methods, as the OpenAPI document
/// must list them. Exhaustive on purpose: a new `Route` variant does not compile until it
/// is listed here, and then `every_route_is_in_the_openapi_document` checks the document
/// (public for the integration tests, which send requests to every route).
pub fn template(route: &Route) -> (&'static str, &'static [&'static str]) {
    match route {
        Route::Ping => ("/_ping", &["get", "head"]),
        Route::OpenApi => ("/api/openapi.json", &["get"]),
        Route::Download => ("/download/flotilla", &["get", "head"]),
        Route::Providers => ("/api/infra/v1/provider/", &["get"]),
        Route::Provider(_) => ("/api/infra/v1/provider/{name}/", &["get"]),
        Route::ProviderCredentials(_) => (
            "/api/infra/v1/provider/{name}/credentials/",
            &["get", "put"],
        ),
        Route::Regions => ("/api/infra/v1/region/", &["get"]),
        Route::Region(..) => ("/api/infra/v1/region/{provider}/{name}/", &["get"]),
        Route::AvailabilityZones => ("/api/infra/v1/az/", &["get"]),
        Route::AvailabilityZone(..) => ("/api/infra/v1/az/{provider}/{region}/{name}/", &["get"]),
        Route::NodeTypes => ("/api/infra/v1/nodetype/", &["get"]),
        Route::NodeType(..) => ("/api/infra/v1/nodetype/{provider}/{name}/", &["get"]),
        Route::Clusters => ("/api/infra/v1/nodecluster/", &["get", "post"]),
        Route::Cluster(_) => (
            "/api/infra/v1/nodecluster/{uuid}/",
            &["get", "patch", "delete"],
        ),
        Route::ClusterDeploy(_) => ("/api/infra/v1/nodecluster/{uuid}/deploy/", &["post"]),
        Route::Nodes => ("/api/infra/v1/node/", &["get"]),
        Route::Node(_) => ("/api/infra/v1/node/{uuid}/", &["get", "patch", "delete"]),
        Route::NodeHealthCheck(_) => ("/api/infra/v1/node/{uuid}/health-check/", &["post"]),
        Route::Token => ("/api/infra/v1/token/", &["post"]),
        Route::Actions => ("/api/audit/v1/action/", &["get"]),
        Route::Action(_) => ("/api/audit/v1/action/{uuid}/", &["get"]),
        Route::ActionCancel(_) => ("/api/audit/v1/action/{uuid}/cancel/", &["post"]),
        Route::ActionRetry(_) => ("/api/audit/v1/action/{uuid}/retry/", &["post"]),
        Route::ActionLogs(_) => ("/api/audit/v1/action/{uuid}/logs/", &["get"]),
        Route::Events => ("/api/audit/v1/events", &["get"]),
        Route::Services => ("/api/app/v1/service/", &["get"]),
        Route::AgentNodes => ("/api/agent/v1/node/", &["post"]),
        Route::AgentNode(_) => ("/api/agent/v1/node/{uuid}/", &["get", "patch"]),
        Route::AgentNodePing(_) => ("/api/agent/v1/node/{uuid}/ping/", &["post"]),
    }
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
    }

    #[test]
    fn unknown_paths_and_misplaced_namespaces_are_not_routes() {
        for path in [
            "/",
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
