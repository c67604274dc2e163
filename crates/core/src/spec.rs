//! Node cluster specifications and their validation.
//!
//! The accepted JSON is exactly the Docker Cloud create body (`name`, `region`, `node_type`,
//! `target_num_nodes`, `disk`, `tags`, `provider_options`), so the original clients work
//! unchanged. Validation is strict and collects *every* problem at once, each naming the field
//! path (`provider_options.vpc.id: required when vpc is given`), because a user fixing a body
//! one error at a time is a user wasting round trips. Unknown keys inside `provider_options`
//! are rejected: a misspelt `security_group` must not silently fall back to auto networking.
//!
//! Quirks of the original clients that are deliberately accepted:
//! * `disk` arrives as a string (`"60"`) from the CLI; a number works too.
//! * `region` and `node_type` arrive as resource URIs (`/api/infra/v1/region/aws/us-east-1/`);
//!   plain names (`us-east-1`) are accepted as well.
//! * tags are `[{"name": "x"}]`, possibly with an `origin` key echoed back by the client.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Default root volume size in GB (Docker Cloud's default).
pub const DEFAULT_DISK_GB: u32 = 60;
/// Smallest root volume that holds a Linux AMI plus Docker.
pub const MIN_DISK_GB: u32 = 8;
/// gp2's largest volume.
pub const MAX_DISK_GB: u32 = 16_384;
/// Upper bound on nodes per cluster; a typo like `3000` should not launch 3000 instances.
pub const MAX_NODES: u32 = 1_000;

/// A validated node cluster specification: the desired state the reconciler converges to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    pub provider: String,
    pub region: String,
    pub node_type: String,
    pub target_num_nodes: u32,
    pub disk_gb: u32,
    pub tags: Vec<String>,
    pub provider_options: ProviderOptions,
    /// Replace a node whose instance disappears out of band (terminated in the console).
    /// Off by default, like Docker Cloud: the cluster is then `Partly deployed` until the
    /// user scales or deploys.
    #[serde(default)]
    pub auto_replace: bool,
}

/// `provider_options` in the exact Docker Cloud shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<VpcOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam: Option<IamOptions>,
}

/// A user-supplied VPC, optionally with chosen subnets and security groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcOptions {
    pub id: String,
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// An IAM instance profile to attach to every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IamOptions {
    pub instance_profile_name: String,
}

/// One problem with one field, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a body; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<FieldError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

impl SpecErrors {
    /// True when some error is about `path` (used by tests and by the API to pick a status).
    pub fn mentions(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}

#[derive(Default)]
struct Collector(Vec<FieldError>);

impl Collector {
    fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.to_owned(),
            message: message.into(),
        });
    }
}

impl ClusterSpec {
    /// Validates a Docker Cloud create body. Unknown top-level keys are ignored (the clients
    /// send fields such as `nickname` that carry no provisioning meaning); unknown keys inside
    /// `provider_options` are errors.
    pub fn from_json(body: &Value) -> Result<ClusterSpec, SpecErrors> {
        let mut errors = Collector::default();
        let Some(object) = body.as_object() else {
            return Err(SpecErrors(vec![FieldError {
                path: "body".into(),
                message: "must be a JSON object".into(),
            }]));
        };

        let name = required_string(object, "name", &mut errors).unwrap_or_default();
        if !name.is_empty()
            && let Err(message) = validate_cluster_name(&name)
        {
            errors.push("name", message);
        }
        let (provider_from_region, region) =
            match required_string(object, "region", &mut errors).map(|r| parse_region_ref(&r)) {
                Some(Ok(parts)) => parts,
                Some(Err(message)) => {
                    errors.push("region", message);
                    (String::new(), String::new())
                }
                None => (String::new(), String::new()),
            };
        let (provider_from_type, node_type) = match required_string(
            object,
            "node_type",
            &mut errors,
        )
        .map(|t| parse_node_type_ref(&t))
        {
            Some(Ok(parts)) => parts,
            Some(Err(message)) => {
                errors.push("node_type", message);
                (String::new(), String::new())
            }
            None => (String::new(), String::new()),
        };
        let provider = if provider_from_region.is_empty() {
            provider_from_type.clone()
        } else {
            provider_from_region.clone()
        };
        if !provider_from_region.is_empty()
            && !provider_from_type.is_empty()
            && provider_from_region != provider_from_type
        {
            errors.push(
                "node_type",
                format!(
                    "provider '{provider_from_type}' does not match the region's provider '{provider_from_region}'"
                ),
            );
        }
        if !provider.is_empty() && provider != "aws" {
            errors.push(
                "region",
                format!("unknown provider '{provider}'; Flotilla supports 'aws'"),
            );
        }

        let target_num_nodes = match object.get("target_num_nodes") {
            None | Some(Value::Null) => 1,
            Some(value) => match integer_like(value) {
                Some(n) if (0..=i64::from(MAX_NODES)).contains(&n) => n as u32,
                Some(_) => {
                    errors.push(
                        "target_num_nodes",
                        format!("must be between 0 and {MAX_NODES}"),
                    );
                    0
                }
                None => {
                    errors.push("target_num_nodes", "must be a whole number");
                    0
                }
            },
        };
        let disk_gb = match object.get("disk") {
            None | Some(Value::Null) => DEFAULT_DISK_GB,
            Some(value) => match integer_like(value) {
                Some(n) if (i64::from(MIN_DISK_GB)..=i64::from(MAX_DISK_GB)).contains(&n) => {
                    n as u32
                }
                Some(_) => {
                    errors.push(
                        "disk",
                        format!("must be between {MIN_DISK_GB} and {MAX_DISK_GB} GB"),
                    );
                    DEFAULT_DISK_GB
                }
                None => {
                    errors.push("disk", "must be a whole number of GB");
                    DEFAULT_DISK_GB
                }
            },
        };
        let tags = parse_tags(object.get("tags"), "tags", &mut errors);
        let auto_replace = match object.get("auto_replace") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(value)) => *value,
            Some(_) => {
                errors.push("auto_replace", "must be true or false");
                false
            }
        };
        let provider_options = match object.get("provider_options") {
            None | Some(Value::Null) => ProviderOptions::default(),
            Some(value) => parse_provider_options(value, &mut errors),
        };

        if errors.0.is_empty() {
            Ok(ClusterSpec {
                name,
                provider,
                region,
                node_type,
                target_num_nodes,
                disk_gb,
                tags,
                provider_options,
                auto_replace,
            })
        } else {
            Err(SpecErrors(errors.0))
        }
    }
}

/// Cluster names become DNS labels (`<name>.cluster.<domain>`), so they follow RFC 1123.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if name.len() > 63 || !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "'{name}' is not a valid name: use 1 to 63 letters, digits and '-', not starting or ending with '-'"
        ));
    }
    Ok(())
}

/// Parses `/api/infra/v1/region/{provider}/{name}/` or a bare region name.
pub fn parse_region_ref(value: &str) -> Result<(String, String), String> {
    parse_ref(value, "region", "/api/infra/v1/region/{provider}/{name}/")
}

/// Parses `/api/infra/v1/nodetype/{provider}/{name}/` or a bare node type name.
pub fn parse_node_type_ref(value: &str) -> Result<(String, String), String> {
    parse_ref(
        value,
        "nodetype",
        "/api/infra/v1/nodetype/{provider}/{name}/",
    )
}

fn parse_ref(value: &str, kind: &str, shape: &str) -> Result<(String, String), String> {
    let valid_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    };
    if !value.contains('/') {
        return if valid_name(value) {
            Ok(("aws".to_owned(), value.to_owned()))
        } else {
            Err(format!("'{value}' is not a valid {kind} name"))
        };
    }
    let prefix = format!("/api/infra/v1/{kind}/");
    let rest = value
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("'{value}' is not of the form {shape}"))?;
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        [provider, name] if valid_name(provider) && valid_name(name) => {
            Ok(((*provider).to_owned(), (*name).to_owned()))
        }
        _ => Err(format!("'{value}' is not of the form {shape}")),
    }
}

fn required_string(
    object: &Map<String, Value>,
    key: &str,
    errors: &mut Collector,
) -> Option<String> {
    match object.get(key) {
        None | Some(Value::Null) => {
            errors.push(key, "required");
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.push(key, "must not be empty");
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(key, "must be a string");
            None
        }
    }
}

/// Accepts `3` and `"3"`; the docker-cloud CLI sends numbers as strings.
fn integer_like(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses `[{"name": "x"}, …]` (also bare strings), dropping duplicate names.
pub fn parse_tags_value(value: Option<&Value>) -> Result<Vec<String>, SpecErrors> {
    let mut errors = Collector::default();
    let tags = parse_tags(value, "tags", &mut errors);
    if errors.0.is_empty() {
        Ok(tags)
    } else {
        Err(SpecErrors(errors.0))
    }
}

fn parse_tags(value: Option<&Value>, path: &str, errors: &mut Collector) -> Vec<String> {
    let items = match value {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            errors.push(path, "must be a list of {\"name\": \"...\"} objects");
            return Vec::new();
        }
    };
    let mut tags: Vec<String> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{index}]");
        let name = match item {
            Value::String(s) => Some(s.as_str()),
            Value::Object(fields) => {
                for key in fields.keys() {
                    if key != "name" && key != "origin" {
                        errors.push(&format!("{item_path}.{key}"), "unknown key");
                    }
                }
                match fields.get("name") {
                    Some(Value::String(s)) => Some(s.as_str()),
                    _ => {
                        errors.push(&format!("{item_path}.name"), "required string");
                        None
                    }
                }
            }
            _ => {
                errors.push(&item_path, "must be an object with a name");
                None
            }
        };
        if let Some(name) = name {
            let trimmed = name.trim();
            if trimmed.is_empty() || trimmed.len() > 128 {
                errors.push(&format!("{item_path}.name"), "must be 1 to 128 characters");
            } else if !tags.iter().any(|t| t == trimmed) {
                tags.push(trimmed.to_owned());
            }
        }
    }
    tags
}

/// Validates `provider_options` alone (also used when the API validates a PATCH).
pub fn parse_provider_options_value(value: &Value) -> Result<ProviderOptions, SpecErrors> {
    let mut errors = Collector::default();
    let options = parse_provider_options(value, &mut errors);
    if errors.0.is_empty() {
        Ok(options)
    } else {
        Err(SpecErrors(errors.0))
    }
}

fn parse_provider_options(value: &Value, errors: &mut Collector) -> ProviderOptions {
    const PATH: &str = "provider_options";
    let Some(object) = value.as_object() else {
        errors.push(PATH, "must be an object with optional 'vpc' and 'iam'");
        return ProviderOptions::default();
    };
    reject_unknown_keys(object, PATH, &["vpc", "iam"], errors);

    let vpc = match object.get("vpc") {
        None | Some(Value::Null) => None,
        Some(Value::Object(vpc)) => {
            let path = "provider_options.vpc";
            reject_unknown_keys(vpc, path, &["id", "subnets", "security_groups"], errors);
            let id = match vpc.get("id") {
                None | Some(Value::Null) => {
                    errors.push("provider_options.vpc.id", "required when vpc is given");
                    String::new()
                }
                Some(value) => aws_id(value, "provider_options.vpc.id", "vpc-", errors),
            };
            let subnets = id_list(
                vpc.get("subnets"),
                "provider_options.vpc.subnets",
                "subnet-",
                errors,
            );
            let security_groups = id_list(
                vpc.get("security_groups"),
                "provider_options.vpc.security_groups",
                "sg-",
                errors,
            );
            Some(VpcOptions {
                id,
                subnets,
                security_groups,
            })
        }
        Some(_) => {
            errors.push("provider_options.vpc", "must be an object");
            None
        }
    };

    let iam = match object.get("iam") {
        None | Some(Value::Null) => None,
        Some(Value::Object(iam)) => {
            reject_unknown_keys(
                iam,
                "provider_options.iam",
                &["instance_profile_name"],
                errors,
            );
            let path = "provider_options.iam.instance_profile_name";
            let name = match iam.get("instance_profile_name") {
                None | Some(Value::Null) => {
                    errors.push(path, "required when iam is given");
                    String::new()
                }
                Some(Value::String(s)) if s.is_empty() => {
                    errors.push(path, "must not be empty");
                    String::new()
                }
                Some(Value::String(s)) => {
                    let valid = s.len() <= 128
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
                    if !valid {
                        errors.push(path, format!("'{s}' is not a valid instance profile name"));
                    }
                    s.clone()
                }
                Some(_) => {
                    errors.push(path, "must be a string");
                    String::new()
                }
            };
            Some(IamOptions {
                instance_profile_name: name,
            })
        }
        Some(_) => {
            errors.push("provider_options.iam", "must be an object");
            None
        }
    };
    ProviderOptions { vpc, iam }
}

fn reject_unknown_keys(
    object: &Map<String, Value>,
    path: &str,
    known: &[&str],
    errors: &mut Collector,
) {
    for key in object.keys() {
        if !known.contains(&key.as_str()) {
            errors.push(
                &format!("{path}.{key}"),
                format!("unknown key (expected one of: {})", known.join(", ")),
            );
        }
    }
}

/// An AWS resource id: prefix plus 8 or 17 hex digits.
fn aws_id(value: &Value, path: &str, prefix: &str, errors: &mut Collector) -> String {
    match value {
        Value::String(s) if s.is_empty() => {
            errors.push(path, "must not be empty");
            String::new()
        }
        Value::String(s) => {
            let hex = s.strip_prefix(prefix).unwrap_or("");
            let valid =
                (hex.len() == 8 || hex.len() == 17) && hex.chars().all(|c| c.is_ascii_hexdigit());
            if !valid {
                errors.push(
                    path,
                    format!("'{s}' is not a valid id (expected {prefix}xxxxxxxx)"),
                );
            }
            s.clone()
        }
        _ => {
            errors.push(path, "must be a string");
            String::new()
        }
    }
}

fn id_list(value: Option<&Value>, path: &str, prefix: &str, errors: &mut Collector) -> Vec<String> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut ids: Vec<String> = Vec::new();
            for (index, item) in items.iter().enumerate() {
                let id = aws_id(item, &format!("{path}[{index}]"), prefix, errors);
                if ids.contains(&id) {
                    errors.push(
                        &format!("{path}[{index}]"),
                        format!("'{id}' is listed twice"),
                    );
                } else {
                    ids.push(id);
                }
            }
            ids
        }
        Some(_) => {
            errors.push(path, "must be a list of ids");
            Vec::new()
        }
    }
}

/// The manager counts a swarm may have: odd, so a Raft majority survives the loss of
/// (n - 1) / 2 managers.
pub const SWARM_MANAGER_COUNTS: [u32; 4] = [1, 3, 5, 7];
/// A swarm's manager count when the create body does not say.
pub const DEFAULT_SWARM_MANAGERS: u32 = 3;

/// A swarm's create body: its own fields, and the two node clusters it consists of.
///
/// The body is a node cluster's (`name`, `region`, `disk`, `provider_options`, `tags`) with
/// the node type and count given per role: `manager_count` (1, 3, 5 or 7; default 3),
/// `manager_node_type`, `worker_count` (default 0) and `worker_node_type` (default: the
/// managers'). Each role becomes a node cluster named `<name>-managers` / `<name>-workers`,
/// validated exactly as a node cluster is; an error names the swarm's field
/// (`manager_node_type`, not `node_type`).
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmSpec {
    pub name: String,
    pub managers: ClusterSpec,
    pub workers: ClusterSpec,
}

impl SwarmSpec {
    pub fn from_json(body: &Value) -> Result<SwarmSpec, SpecErrors> {
        let mut errors = Collector::default();
        let Some(object) = body.as_object() else {
            return Err(SpecErrors(vec![FieldError {
                path: "body".into(),
                message: "must be a JSON object".into(),
            }]));
        };
        let name = required_string(object, "name", &mut errors).unwrap_or_default();
        if !name.is_empty()
            && let Err(message) = validate_cluster_name(&format!("{name}-managers"))
        {
            errors.push("name", message.replace("-managers'", "'"));
        }
        let count = |field: &str, default: u32, errors: &mut Collector| match object.get(field) {
            None | Some(Value::Null) => Some(default),
            Some(value) => match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Some(n),
                None => {
                    errors.push(field, "must be a whole number");
                    None
                }
            },
        };
        let managers = count("manager_count", DEFAULT_SWARM_MANAGERS, &mut errors);
        if let Some(n) = managers
            && !SWARM_MANAGER_COUNTS.contains(&n)
        {
            errors.push(
                "manager_count",
                format!("must be 1, 3, 5 or 7 (an odd number keeps a Raft majority), not {n}"),
            );
        }
        let workers = count("worker_count", 0, &mut errors);
        let manager_type = required_string(object, "manager_node_type", &mut errors);
        let worker_type = match object.get("worker_node_type") {
            None | Some(Value::Null) => manager_type.clone(),
            Some(_) => required_string(object, "worker_node_type", &mut errors),
        };
        for key in ["node_type", "target_num_nodes"] {
            if object.contains_key(key) {
                errors.push(
                    key,
                    "not a swarm field: give manager_node_type/worker_node_type and manager_count/worker_count",
                );
            }
        }
        let role = |suffix: &str, node_type: Option<String>, count: Option<u32>| {
            let mut cluster = body.clone();
            cluster["name"] = Value::String(format!("{name}-{suffix}"));
            cluster["node_type"] = node_type.map(Value::String).unwrap_or(Value::Null);
            cluster["target_num_nodes"] = Value::from(count.unwrap_or(1));
            ClusterSpec::from_json(&cluster)
        };
        let rename = |error: FieldError, role: &str| FieldError {
            path: match error.path.as_str() {
                "node_type" => format!("{role}_node_type"),
                "target_num_nodes" => format!("{role}_count"),
                "name" => "name".into(),
                _ => error.path,
            },
            message: error.message,
        };
        let manager_spec = role("managers", manager_type, managers);
        let worker_spec = role("workers", worker_type, workers.map(|n| n.max(1)));
        for (result, label) in [(&manager_spec, "manager"), (&worker_spec, "worker")] {
            if let Err(e) = result {
                for error in &e.0 {
                    let error = rename(error.clone(), label);
                    if !errors
                        .0
                        .iter()
                        .any(|seen: &FieldError| seen.path == error.path)
                    {
                        errors.0.push(error);
                    }
                }
            }
        }
        if !errors.0.is_empty() {
            return Err(SpecErrors(errors.0));
        }
        let (Ok(managers), Ok(mut workers_spec)) = (manager_spec, worker_spec) else {
            unreachable!("errors were returned above");
        };
        workers_spec.target_num_nodes = workers.unwrap_or(0);
        Ok(SwarmSpec {
            name,
            managers,
            workers: workers_spec,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({"name": "web", "region": "/api/infra/v1/region/aws/us-east-1/",
               "node_type": "/api/infra/v1/nodetype/aws/t3.micro/"})
    }

    fn errors_of(body: Value) -> SpecErrors {
        ClusterSpec::from_json(&body).expect_err("body should be rejected")
    }

    #[test]
    fn defaults_apply_to_a_minimal_body() {
        let spec = ClusterSpec::from_json(&minimal()).expect("valid");
        assert_eq!(spec.region, "us-east-1");
        assert_eq!(spec.node_type, "t3.micro");
        assert_eq!(spec.provider, "aws");
        assert_eq!(spec.target_num_nodes, 1);
        assert_eq!(spec.disk_gb, 60);
        assert!(spec.tags.is_empty());
        assert_eq!(spec.provider_options, ProviderOptions::default());
    }

    #[test]
    fn the_cli_body_with_string_disk_and_provider_options_is_accepted() {
        let body = json!({"name":"c1","target_num_nodes":2,"region":"/api/infra/v1/region/aws/us-east-1/",
            "node_type":"/api/infra/v1/nodetype/aws/t2.micro/","disk":"80",
            "provider_options":{"vpc":{"id":"vpc-0123abcd","subnets":["subnet-0123abcd"],
            "security_groups":["sg-0123abcd"]},"iam":{"instance_profile_name":"prof"}},
            "tags":[{"name":"web"},{"name":"web","origin":"user"},{"name":"db"}]});
        let spec = ClusterSpec::from_json(&body).expect("valid");
        assert_eq!(spec.disk_gb, 80);
        assert_eq!(spec.tags, vec!["web", "db"]);
        let vpc = spec.provider_options.vpc.expect("vpc");
        assert_eq!(vpc.id, "vpc-0123abcd");
        assert_eq!(vpc.subnets, vec!["subnet-0123abcd"]);
        assert_eq!(vpc.security_groups, vec!["sg-0123abcd"]);
        assert_eq!(
            spec.provider_options
                .iam
                .expect("iam")
                .instance_profile_name,
            "prof"
        );
    }

    #[test]
    fn plain_names_work_for_region_and_node_type() {
        let spec = ClusterSpec::from_json(
            &json!({"name":"a","region":"eu-west-1","node_type":"m5.large"}),
        )
        .expect("valid");
        assert_eq!(
            (spec.region.as_str(), spec.node_type.as_str()),
            ("eu-west-1", "m5.large")
        );
    }

    #[test]
    fn missing_required_fields_are_all_named() {
        let errors = errors_of(json!({}));
        assert!(
            errors.mentions("name") && errors.mentions("region") && errors.mentions("node_type")
        );
    }

    #[test]
    fn vpc_without_id_names_the_path() {
        let mut body = minimal();
        body["provider_options"] = json!({"vpc": {"subnets": ["subnet-0123abcd"]}});
        let errors = errors_of(body);
        assert_eq!(
            errors.to_string(),
            "provider_options.vpc.id: required when vpc is given"
        );
    }

    #[test]
    fn unknown_keys_and_empty_strings_are_rejected() {
        let mut body = minimal();
        body["provider_options"] = json!({"vpc": {"id": "", "security_group": ["sg-1"]},
                                           "iam": {"instance_profile_name": ""}, "extra": 1});
        let errors = errors_of(body);
        assert!(errors.mentions("provider_options.vpc.id"));
        assert!(errors.mentions("provider_options.vpc.security_group"));
        assert!(errors.mentions("provider_options.iam.instance_profile_name"));
        assert!(errors.mentions("provider_options.extra"));
    }

    #[test]
    fn malformed_ids_and_duplicates_are_rejected() {
        let mut body = minimal();
        body["provider_options"] = json!({"vpc": {"id": "vpc-0123abcd", "subnets": ["subnet-0123abcd", "subnet-0123abcd", "sg-01234567"]}});
        let errors = errors_of(body);
        assert!(errors.mentions("provider_options.vpc.subnets[1]"));
        assert!(errors.mentions("provider_options.vpc.subnets[2]"));
    }

    #[test]
    fn numbers_out_of_range_are_rejected() {
        let mut body = minimal();
        body["target_num_nodes"] = json!(5000);
        body["disk"] = json!("two");
        let errors = errors_of(body);
        assert!(errors.mentions("target_num_nodes") && errors.mentions("disk"));
    }

    #[test]
    fn bad_references_and_names_are_rejected() {
        let body = json!({"name": "-bad name", "region": "/api/infra/v1/nodetype/aws/x/",
                          "node_type": "/api/infra/v1/nodetype/digitalocean/1gb/"});
        let errors = errors_of(body);
        assert!(errors.mentions("name"));
        assert!(errors.mentions("region"));
        let body = json!({"name": "ok", "region": "/api/infra/v1/region/digitalocean/lon1/",
                          "node_type": "/api/infra/v1/nodetype/digitalocean/1gb/"});
        assert!(
            errors_of(body)
                .to_string()
                .contains("unknown provider 'digitalocean'")
        );
    }

    #[test]
    fn non_object_body_is_rejected() {
        assert!(errors_of(json!([1, 2])).mentions("body"));
    }

    #[test]
    fn a_swarm_is_two_node_clusters_and_its_errors_name_the_swarm_field() {
        let body = json!({"name": "prod", "region": "/api/infra/v1/region/aws/us-east-1/",
            "manager_node_type": "/api/infra/v1/nodetype/aws/t3.small/", "worker_count": 2,
            "disk": 30});
        let spec = SwarmSpec::from_json(&body).expect("valid");
        assert_eq!(spec.managers.name, "prod-managers");
        assert_eq!(spec.managers.target_num_nodes, DEFAULT_SWARM_MANAGERS);
        assert_eq!(spec.workers.name, "prod-workers");
        assert_eq!(spec.workers.target_num_nodes, 2);
        assert_eq!(
            spec.workers.node_type, "t3.small",
            "workers default to the managers' type"
        );
        assert_eq!(spec.workers.disk_gb, 30);

        let mut no_workers = body.clone();
        no_workers
            .as_object_mut()
            .expect("object")
            .remove("worker_count");
        assert_eq!(
            SwarmSpec::from_json(&no_workers)
                .expect("valid")
                .workers
                .target_num_nodes,
            0
        );

        let bad = json!({"name": "prod", "region": "/api/infra/v1/region/aws/us-east-1/",
            "manager_node_type": "t3.small", "worker_node_type": "", "manager_count": 4});
        let errors = SwarmSpec::from_json(&bad).expect_err("invalid");
        assert!(errors.mentions("manager_count"), "{errors}");
        assert!(errors.mentions("worker_node_type"), "{errors}");
        assert!(errors.to_string().contains("1, 3, 5 or 7"), "{errors}");

        let wrong = json!({"name": "-x", "region": "/api/infra/v1/region/aws/us-east-1/",
            "node_type": "t3.small"});
        let errors = SwarmSpec::from_json(&wrong).expect_err("invalid");
        assert!(
            errors.mentions("name") && errors.mentions("node_type"),
            "{errors}"
        );
        assert!(errors.mentions("manager_node_type"), "{errors}");
    }
}
