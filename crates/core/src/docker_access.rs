//! Who may do what through a client bundle (issue #15): the one decision behind the Docker
//! API proxy that agents on swarm managers serve. Given the caller's role on the swarm and
//! one Docker engine API request (method, path, body), the answer is allow, or deny naming
//! the role the request needs and why.
//!
//! Design decisions:
//! * **Deny by default.** Every request is classified by a table of the engine API's
//!   endpoints; a request the table does not know needs `admin`. A new engine endpoint is
//!   therefore closed to everyone but administrators until it is listed here.
//! * **Roles, weakest first**: `view` lists and inspects (GETs, logs, events); `operate`
//!   changes what runs (start, stop, kill, update and scale a service); `manage` creates
//!   and removes (containers, services, networks, volumes, images, secrets, exec and attach,
//!   which run commands or type into a container); `admin` alone touches the swarm
//!   (`/swarm/*`, whose `GET` carries the join tokens, node update and removal), plugins
//!   (which run with host privileges) and anything that reaches the host.
//! * **Host access needs `admin` whatever the endpoint's own role**: a privileged container
//!   or exec, a bind mount of a host path (`Binds` with an absolute source, a `bind` mount,
//!   a `local` volume over a host device or directory), host devices, added capabilities,
//!   the host's PID/IPC/UTS/user/network namespace, and security options that turn
//!   confinement off. Only the requests that can ask for those carry a body worth reading
//!   ([`inspects_body`]); the proxy buffers exactly those.
//! * **Field names are matched case-insensitively**, as the engine's Go JSON decoder matches
//!   them: `"privileged": true` is as privileged as `"Privileged": true`, and every key
//!   that matches is looked at. A body that is not JSON needs `admin` (it cannot be
//!   checked).
//! * The path may carry the API version (`/v1.41/containers/json`); the query string is
//!   not part of the decision (nothing in it grants host access).

use flotilla_api::Role;
use serde_json::Value;

/// The TCP port the proxy listens on, on each manager of a swarm (the Docker CLI's
/// conventional TLS port; the engines themselves listen only on their unix socket).
pub const DOCKER_PROXY_PORT: u16 = 2376;

/// What the proxy does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused: `needed` is the weakest role that may do it, `reason` says what it is
    /// (and, for host access, which part of the body asked for it).
    Deny {
        needed: Role,
        reason: String,
    },
}

impl Decision {
    /// The refusal's message for the caller, naming the caller's role and the one needed.
    pub fn message(&self, role: Role) -> Option<String> {
        match self {
            Decision::Allow => None,
            Decision::Deny { needed, reason } => Some(format!(
                "flotilla: refused: {reason} needs the '{needed}' role on this swarm; your role is '{role}'"
            )),
        }
    }
}

/// Decides one engine API request for a caller holding `role` on the swarm. `body` is the
/// request's body when [`inspects_body`] asked for it (ignored otherwise).
pub fn decide(role: Role, method: &str, path: &str, body: &[u8]) -> Decision {
    let (mut needed, mut reason) = classify(method, path);
    if inspects_body(method, path)
        && let Some(host) = host_access(path, body)
    {
        needed = Role::Admin;
        reason = host;
    }
    if role >= needed {
        Decision::Allow
    } else {
        Decision::Deny { needed, reason }
    }
}

/// Whether [`decide`] reads the body of this request: creates and updates that can ask for
/// host access.
pub fn inspects_body(method: &str, path: &str) -> bool {
    if !method.eq_ignore_ascii_case("POST") {
        return false;
    }
    let segments = segments(path);
    matches!(
        segments.as_slice(),
        ["containers", "create"]
            | ["containers", _, "exec"]
            | ["services", "create"]
            | ["services", _, "update"]
            | ["volumes", "create"]
    )
}

/// The path's segments without the API version prefix, the query or empty segments.
fn segments(path: &str) -> Vec<&str> {
    let path = path.split('?').next().unwrap_or_default();
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.first().is_some_and(|s| {
        s.starts_with('v') && s[1..].chars().all(|c| c.is_ascii_digit() || c == '.') && s.len() > 1
    }) {
        segments.remove(0);
    }
    segments
}

/// The role an endpoint needs before its body is looked at, and what it is.
fn classify(method: &str, path: &str) -> (Role, String) {
    use Role::*;
    let method = method.to_ascii_uppercase();
    let segments = segments(path);
    let read = method == "GET" || method == "HEAD";
    let what = |text: &str| text.to_owned();
    // Image names may hold slashes (`registry/team/app:tag`): match on the ends.
    if segments.first() == Some(&"images") && segments.len() >= 2 {
        let last = segments.last().copied().unwrap_or_default();
        return match (method.as_str(), segments.len(), last) {
            ("GET" | "HEAD", 2, "json" | "search") => (View, what("listing images")),
            ("GET" | "HEAD", _, "json" | "history") => (View, what("inspecting an image")),
            ("GET" | "HEAD", _, "get") => (Manage, what("exporting images")),
            ("POST", 2, "create" | "load" | "prune") => (Manage, what("pulling or loading images")),
            ("POST", _, "push" | "tag") => (Manage, what("pushing or tagging an image")),
            ("DELETE", _, _) => (Manage, what("removing an image")),
            _ => (
                Admin,
                format!("{method} {path}, a request the proxy does not know,"),
            ),
        };
    }
    if segments.first() == Some(&"distribution") && read {
        return (View, what("inspecting an image in its registry"));
    }
    let rule: Option<(Role, &str)> = match (method.as_str(), segments.as_slice()) {
        (_, ["swarm", ..]) => Some((
            Admin,
            "changing or reading the swarm's settings and join tokens",
        )),
        (_, ["plugins", ..]) if !read => Some((Admin, "installing or changing a plugin")),
        (_, ["nodes", _, "update"]) => Some((Admin, "updating a swarm node")),
        ("DELETE", ["nodes", _]) => Some((Admin, "removing a swarm node")),
        ("GET" | "HEAD", ["_ping" | "version" | "info" | "events"]) => {
            Some((View, "reading the engine's state"))
        }
        ("GET" | "HEAD", ["system", "df"]) => Some((View, "reading the engine's disk use")),
        ("POST", ["auth"]) => Some((View, "checking registry credentials")),
        ("GET" | "HEAD", ["containers", "json"]) => Some((View, "listing containers")),
        (
            "GET" | "HEAD",
            [
                "containers",
                _,
                "json" | "top" | "logs" | "stats" | "changes",
            ],
        ) => Some((View, "inspecting a container")),
        ("POST", ["containers", _, "wait"]) => Some((View, "waiting for a container")),
        ("GET" | "HEAD", ["containers", _, "export" | "archive"]) => {
            Some((Manage, "copying files out of a container"))
        }
        ("PUT", ["containers", _, "archive"]) => Some((Manage, "copying files into a container")),
        ("POST", ["containers", "create"]) => Some((Manage, "creating a container")),
        ("POST", ["containers", "prune"]) => Some((Manage, "removing containers")),
        ("DELETE", ["containers", _]) => Some((Manage, "removing a container")),
        (
            "POST",
            [
                "containers",
                _,
                "start" | "stop" | "restart" | "kill" | "pause" | "unpause" | "resize" | "update",
            ],
        ) => Some((Operate, "starting, stopping or updating a container")),
        ("POST", ["containers", _, "rename"]) => Some((Manage, "renaming a container")),
        ("POST", ["containers", _, "attach"]) | ("GET", ["containers", _, "attach", "ws"]) => {
            Some((Manage, "attaching to a container"))
        }
        ("POST", ["containers", _, "exec"]) => Some((Manage, "running a command in a container")),
        ("POST", ["exec", _, "start" | "resize"]) => {
            Some((Manage, "running a command in a container"))
        }
        ("GET" | "HEAD", ["exec", _, "json"]) => Some((View, "inspecting a command")),
        ("POST", ["commit" | "build" | "session" | "grpc"]) => {
            Some((Manage, "building or committing images"))
        }
        ("POST", ["build", "prune"]) => Some((Manage, "removing the build cache")),
        ("GET" | "HEAD", ["networks"] | ["networks", _]) => Some((View, "inspecting networks")),
        ("POST", ["networks", "create" | "prune"]) | ("DELETE", ["networks", _]) => {
            Some((Manage, "creating or removing a network"))
        }
        ("POST", ["networks", _, "connect" | "disconnect"]) => {
            Some((Manage, "connecting a container to a network"))
        }
        ("GET" | "HEAD", ["volumes"] | ["volumes", _]) => Some((View, "inspecting volumes")),
        ("POST", ["volumes", "create" | "prune"]) | ("DELETE", ["volumes", _]) => {
            Some((Manage, "creating or removing a volume"))
        }
        ("GET" | "HEAD", ["services"] | ["services", _] | ["services", _, "logs"]) => {
            Some((View, "inspecting services"))
        }
        ("GET" | "HEAD", ["tasks"] | ["tasks", _] | ["tasks", _, "logs"]) => {
            Some((View, "inspecting tasks"))
        }
        ("POST", ["services", "create"]) => Some((Manage, "creating a service")),
        ("DELETE", ["services", _]) => Some((Manage, "removing a service")),
        ("POST", ["services", _, "update"]) => Some((Operate, "updating or scaling a service")),
        ("GET" | "HEAD", ["nodes"] | ["nodes", _]) => Some((View, "inspecting swarm nodes")),
        ("GET" | "HEAD", ["secrets" | "configs"] | ["secrets" | "configs", _]) => {
            Some((View, "inspecting secrets and configs"))
        }
        ("POST", ["secrets" | "configs", "create"] | ["secrets" | "configs", _, "update"])
        | ("DELETE", ["secrets" | "configs", _]) => {
            Some((Manage, "creating or removing a secret or config"))
        }
        ("GET" | "HEAD", ["plugins", ..]) => Some((View, "inspecting plugins")),
        _ => None,
    };
    match rule {
        Some((role, text)) => (role, text.to_owned()),
        None => (
            Admin,
            format!("{method} {path}, a request the proxy does not know,"),
        ),
    }
}

/// Every value of `object` under a key equal to `key` ignoring ASCII case.
fn fields<'a>(object: &'a Value, key: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    object
        .as_object()
        .into_iter()
        .flat_map(|map| map.iter())
        .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Every value at `path` (each step case-insensitive, arrays not descended).
fn at<'a>(object: &'a Value, path: &[&'a str]) -> Vec<&'a Value> {
    let mut current = vec![object];
    for key in path {
        current = current.into_iter().flat_map(|v| fields(v, key)).collect();
    }
    current
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// What part of the body asks for host access, if any.
fn host_access(path: &str, body: &[u8]) -> Option<String> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(body) => body,
            Err(_) => return Some("a request body that is not JSON (it cannot be checked)".into()),
        }
    };
    let segments = segments(path);
    match segments.as_slice() {
        ["containers", "create"] => {
            let host = at(&body, &["HostConfig"]);
            host.into_iter().find_map(host_config)
        }
        ["containers", _, "exec"] => at(&body, &["Privileged"])
            .into_iter()
            .any(truthy)
            .then(|| "a privileged exec".to_owned()),
        ["services", "create"] | ["services", _, "update"] => {
            let template = at(&body, &["TaskTemplate"]);
            template.into_iter().find_map(task_template)
        }
        ["volumes", "create"] => at(&body, &["DriverOpts"])
            .into_iter()
            .find_map(|opts| volume_options(opts, "a volume")),
        _ => None,
    }
}

/// A container's `HostConfig`: privileged, binds, mounts, devices, capabilities, namespaces,
/// security options.
fn host_config(host: &Value) -> Option<String> {
    if at(host, &["Privileged"]).into_iter().any(truthy) {
        return Some("a privileged container".into());
    }
    for binds in at(host, &["Binds"]) {
        for bind in binds.as_array().into_iter().flatten() {
            let source = text(bind).split(':').next().unwrap_or_default();
            if source.starts_with('/') {
                return Some(format!("a bind mount of the host path {source}"));
            }
        }
    }
    if let Some(found) = at(host, &["Mounts"]).into_iter().find_map(mounts) {
        return Some(found);
    }
    for (key, what) in [
        ("Devices", "host devices"),
        ("DeviceRequests", "host devices"),
        ("DeviceCgroupRules", "host devices"),
        ("CapAdd", "added capabilities"),
    ] {
        if at(host, &[key]).into_iter().any(truthy) {
            return Some(format!("a container with {what}"));
        }
    }
    for key in [
        "PidMode",
        "IpcMode",
        "UTSMode",
        "UsernsMode",
        "NetworkMode",
        "CgroupnsMode",
    ] {
        if at(host, &[key])
            .into_iter()
            .any(|v| text(v).eq_ignore_ascii_case("host"))
        {
            return Some(format!("a container in the host's namespace ({key}=host)"));
        }
    }
    for options in at(host, &["SecurityOpt"]) {
        for option in options.as_array().into_iter().flatten() {
            let option = text(option).to_ascii_lowercase();
            if option.contains("unconfined") || option.contains("disable") {
                return Some(format!("a container with the security option '{option}'"));
            }
        }
    }
    None
}

/// A list of mounts (a container's `HostConfig.Mounts`, a service's
/// `ContainerSpec.Mounts`): a `bind` one, or a volume over a host path.
fn mounts(list: &Value) -> Option<String> {
    for mount in list.as_array().into_iter().flatten() {
        let kind = at(mount, &["Type"])
            .into_iter()
            .map(text)
            .next()
            .unwrap_or("volume");
        let source = at(mount, &["Source"])
            .into_iter()
            .map(text)
            .next()
            .unwrap_or_default();
        if kind.eq_ignore_ascii_case("bind") {
            return Some(format!("a bind mount of the host path {source}"));
        }
        if !kind.eq_ignore_ascii_case("volume")
            && !kind.eq_ignore_ascii_case("tmpfs")
            && !kind.eq_ignore_ascii_case("npipe")
        {
            continue;
        }
        for options in at(mount, &["VolumeOptions", "DriverConfig", "Options"]) {
            if let Some(found) = volume_options(options, "a volume mount") {
                return Some(found);
            }
        }
    }
    None
}

/// A `local` volume's options that mount a host device or directory (`device=`, `o=bind`).
fn volume_options(options: &Value, what: &str) -> Option<String> {
    let device = fields(options, "device").map(text).find(|d| !d.is_empty());
    let bind = fields(options, "o").any(|o| {
        text(o).split(',').any(|o| {
            o.trim().eq_ignore_ascii_case("bind") || o.trim().eq_ignore_ascii_case("rbind")
        })
    });
    match (device, bind) {
        (Some(device), _) => Some(format!("{what} over the host path {device}")),
        (None, true) => Some(format!("{what} bound to a host path")),
        (None, false) => None,
    }
}

/// A service's `TaskTemplate`: its container's mounts and capabilities, the host network.
fn task_template(template: &Value) -> Option<String> {
    for spec in at(template, &["ContainerSpec"]) {
        if let Some(found) = at(spec, &["Mounts"]).into_iter().find_map(mounts) {
            return Some(found);
        }
        if at(spec, &["CapabilityAdd"]).into_iter().any(truthy) {
            return Some("a service with added capabilities".into());
        }
        for privileges in at(spec, &["Privileges"]) {
            let unconfined = ["Seccomp", "AppArmor"].iter().any(|key| {
                at(privileges, &[key, "Mode"])
                    .into_iter()
                    .any(|m| text(m).eq_ignore_ascii_case("unconfined"))
            }) || at(privileges, &["SELinuxContext", "Disable"])
                .into_iter()
                .any(truthy);
            if unconfined {
                return Some("a service without confinement (Privileges)".into());
            }
        }
    }
    for networks in at(template, &["Networks"]) {
        for network in networks.as_array().into_iter().flatten() {
            if at(network, &["Target"])
                .into_iter()
                .any(|t| text(t).eq_ignore_ascii_case("host"))
            {
                return Some("a service on the host's network".into());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;

    fn needed(method: &str, path: &str, body: &str) -> Option<Role> {
        // The weakest role that is allowed.
        Role::ALL
            .into_iter()
            .find(|role| decide(*role, method, path, body.as_bytes()) == Decision::Allow)
    }

    /// The table of the issue: view lists and inspects, operate scales and updates, manage
    /// creates and removes, admin alone reaches the host or the swarm's settings.
    #[test]
    fn each_request_needs_its_role() {
        let bind_service = r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"busybox","Mounts":[{"Type":"bind","Source":"/etc","Target":"/x"}]}}}"#;
        let plain_service = r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"busybox","Mounts":[{"Type":"volume","Source":"data","Target":"/x"}]}}}"#;
        let table: &[(&str, &str, &str, Role)] = &[
            ("HEAD", "/_ping", "", View),
            ("GET", "/v1.41/version", "", View),
            ("GET", "/v1.41/info", "", View),
            ("GET", "/v1.41/services?status=true", "", View),
            ("GET", "/v1.41/services/abc", "", View),
            ("GET", "/v1.41/services/abc/logs?follow=1", "", View),
            ("GET", "/v1.41/tasks?filters=x", "", View),
            ("GET", "/v1.41/nodes", "", View),
            ("GET", "/v1.41/containers/json", "", View),
            ("GET", "/v1.41/containers/abc/logs", "", View),
            ("GET", "/v1.41/images/json", "", View),
            (
                "GET",
                "/v1.41/images/registry.example/team/app:1/json",
                "",
                View,
            ),
            ("GET", "/v1.41/events", "", View),
            (
                "POST",
                "/v1.41/services/abc/update?version=3",
                r#"{"Mode":{"Replicated":{"Replicas":3}}}"#,
                Operate,
            ),
            ("POST", "/v1.41/containers/abc/stop", "", Operate),
            ("POST", "/v1.41/containers/abc/restart", "", Operate),
            ("POST", "/v1.41/services/create", plain_service, Manage),
            ("DELETE", "/v1.41/services/abc", "", Manage),
            (
                "POST",
                "/v1.41/containers/create?name=x",
                r#"{"Image":"busybox","HostConfig":{"Binds":["data:/data"]}}"#,
                Manage,
            ),
            ("DELETE", "/v1.41/containers/abc?force=1", "", Manage),
            (
                "POST",
                "/v1.41/containers/abc/exec",
                r#"{"Cmd":["sh"]}"#,
                Manage,
            ),
            ("POST", "/v1.41/exec/abc/start", "{}", Manage),
            ("POST", "/v1.41/containers/abc/attach?stream=1", "", Manage),
            ("POST", "/v1.41/images/create?fromImage=busybox", "", Manage),
            (
                "POST",
                "/v1.41/volumes/create",
                r#"{"Name":"data"}"#,
                Manage,
            ),
            ("POST", "/v1.41/networks/create", r#"{"Name":"n"}"#, Manage),
            ("POST", "/v1.41/services/create", bind_service, Admin),
            (
                "POST",
                "/v1.41/services/abc/update?version=3",
                bind_service,
                Admin,
            ),
            (
                "POST",
                "/v1.41/containers/create",
                r#"{"HostConfig":{"Privileged":true}}"#,
                Admin,
            ),
            (
                "POST",
                "/v1.41/containers/create",
                r#"{"HostConfig":{"Binds":["/:/host"]}}"#,
                Admin,
            ),
            (
                "POST",
                "/v1.41/containers/create",
                r#"{"HostConfig":{"Mounts":[{"Type":"bind","Source":"/var/run/docker.sock","Target":"/s"}]}}"#,
                Admin,
            ),
            (
                "POST",
                "/v1.41/containers/create",
                r#"{"HostConfig":{"PidMode":"host"}}"#,
                Admin,
            ),
            (
                "POST",
                "/v1.41/containers/create",
                r#"{"HostConfig":{"CapAdd":["SYS_ADMIN"]}}"#,
                Admin,
            ),
            (
                "POST",
                "/v1.41/containers/create",
                r#"{"HostConfig":{"Devices":[{"PathOnHost":"/dev/sda"}]}}"#,
                Admin,
            ),
            (
                "POST",
                "/v1.41/containers/create",
                r#"{"HostConfig":{"SecurityOpt":["seccomp=unconfined"]}}"#,
                Admin,
            ),
            (
                "POST",
                "/v1.41/containers/abc/exec",
                r#"{"Cmd":["sh"],"Privileged":true}"#,
                Admin,
            ),
            (
                "POST",
                "/v1.41/volumes/create",
                r#"{"Name":"etc","DriverOpts":{"type":"none","o":"bind","device":"/etc"}}"#,
                Admin,
            ),
            ("POST", "/v1.41/swarm/init", "{}", Admin),
            ("POST", "/v1.41/swarm/join", "{}", Admin),
            ("POST", "/v1.41/swarm/leave?force=1", "", Admin),
            ("POST", "/v1.41/swarm/update?version=1", "{}", Admin),
            ("GET", "/v1.41/swarm", "", Admin),
            ("GET", "/v1.41/swarm/unlockkey", "", Admin),
            ("POST", "/v1.41/nodes/abc/update?version=1", "{}", Admin),
            ("DELETE", "/v1.41/nodes/abc", "", Admin),
            ("POST", "/v1.41/plugins/pull?remote=x", "[]", Admin),
            ("POST", "/v1.41/nonsense", "", Admin),
            ("PATCH", "/v1.41/containers/json", "", Admin),
        ];
        for (method, path, body, role) in table {
            assert_eq!(
                needed(method, path, body),
                Some(*role),
                "{method} {path} {body}"
            );
        }
    }

    #[test]
    fn field_names_match_in_any_case_as_the_engine_reads_them() {
        for body in [
            r#"{"hostconfig":{"privileged":true}}"#,
            r#"{"HostConfig":{"Privileged":false,"PRIVILEGED":true}}"#,
            r#"{"hostConfig":{"binds":["/etc:/x:ro"]}}"#,
        ] {
            assert_eq!(
                needed("POST", "/containers/create", body),
                Some(Admin),
                "{body}"
            );
        }
        let service =
            r#"{"tasktemplate":{"containerspec":{"mounts":[{"type":"BIND","source":"/"}]}}}"#;
        assert_eq!(
            needed("POST", "/v1.41/services/create", service),
            Some(Admin)
        );
    }

    #[test]
    fn a_body_that_cannot_be_checked_needs_admin() {
        let decision = decide(Manage, "POST", "/containers/create", b"{not json");
        let Decision::Deny { needed, reason } = decision else {
            panic!("allowed");
        };
        assert_eq!(needed, Admin);
        assert!(reason.contains("not JSON"), "{reason}");
        // An empty body is just an empty request.
        assert_eq!(
            decide(Manage, "POST", "/containers/create", b""),
            Decision::Allow
        );
    }

    #[test]
    fn the_refusal_names_both_roles_and_the_reason() {
        let body = br#"{"TaskTemplate":{"ContainerSpec":{"Mounts":[{"Type":"bind","Source":"/etc","Target":"/x"}]}}}"#;
        let decision = decide(Manage, "POST", "/v1.41/services/create", body);
        let message = decision.message(Manage).expect("refused");
        assert!(
            message.contains("bind mount of the host path /etc"),
            "{message}"
        );
        assert!(message.contains("'admin'"), "{message}");
        assert!(message.contains("your role is 'manage'"), "{message}");
        assert_eq!(Decision::Allow.message(View), None);
    }

    #[test]
    fn only_create_and_update_bodies_are_read() {
        assert!(inspects_body("POST", "/v1.41/containers/create"));
        assert!(inspects_body("post", "/services/abc/update"));
        assert!(inspects_body("POST", "/volumes/create"));
        assert!(inspects_body("POST", "/containers/abc/exec"));
        assert!(!inspects_body("GET", "/containers/create"));
        assert!(!inspects_body("POST", "/containers/abc/start"));
        assert!(!inspects_body("POST", "/images/load"));
    }

    proptest::proptest! {
        /// A stronger role is allowed whatever a weaker one is, and admin everything.
        #[test]
        fn roles_are_monotone(method in "(GET|POST|PUT|DELETE|HEAD)", path in "(/v1\\.41)?/[a-z_]{1,10}(/[a-z0-9]{1,6}){0,3}", body in "\\{\"HostConfig\":\\{\"(Privileged|CapAdd|Binds)\":(true|\\[\"/a:/b\"\\]|\\[\\])\\}\\}") {
            let allowed: Vec<bool> = Role::ALL.iter().map(|r| decide(*r, &method, &path, body.as_bytes()) == Decision::Allow).collect();
            proptest::prop_assert!(allowed[3]);
            for pair in allowed.windows(2) {
                proptest::prop_assert!(!pair[0] || pair[1], "{method} {path}: {allowed:?}");
            }
        }
    }
}
