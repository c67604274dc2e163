//! Authorization, decided here and nowhere else (issue #15): given the caller (a
//! [`Principal`]: the user, whether it is the server administrator, and the grants it holds
//! through its teams) and what a request does to which resource (the route table's
//! [`Access`] for the route and method), the answer is allow, 404 or 403.
//!
//! Design decisions:
//! * **Roles are ordered** (`view < operate < manage < admin`): a caller's role on a resource
//!   is the strongest of its teams' grants in the resource's organization that name the
//!   resource, the swarm it belongs to (a swarm's node clusters and their nodes follow the
//!   swarm), or everything (`*`). Nodes follow their cluster, actions their object. A
//!   bring-your-own node belongs to no organization: only the server administrator sees it.
//! * **Invisible is nonexistent.** A resource the caller holds no role on is answered with
//!   the very 404 the handler gives for a uuid that does not exist ([`not_found`]), so
//!   probing uuids tells a stranger nothing. Only a caller who may view a resource learns
//!   that a change needs more: 403 naming the role needed and the role held.
//! * **The server administrator** (the bootstrap `admin`, and any user created with
//!   `admin: true`) is allowed everything without looking at grants; it is the only
//!   principal for installation-wide routes ([`Access::ServerAdmin`]).
//! * **Decided before the handler.** The dispatcher calls [`authorize`] after
//!   authentication and before reading the handler's answer, for every route, from the
//!   route table's rule; handlers never check roles. Lists are not refused but cut to what
//!   the caller may view: [`Viewer`] is what the application's list operations filter
//!   with, and the node list pushes the same rule into SQL (`store::access`'s
//!   `visible_clusters_sql!`; `tests/it/access.rs` checks that both agree).
//! * Grants are read from the store on every request (one indexed query), so a revoked
//!   grant or membership, like a revoked key, takes effect at the next request.

use flotilla_api::{Role, uri};

use crate::routes::{Access, Route};
use crate::store::access::{ALL, DEFAULT_ORG, GrantRecord, Owner};
use crate::store::{Store, StoreError};

/// Who is asking, with everything [`authorize`] needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    /// The server administrator: everything is allowed.
    pub admin: bool,
    /// The grants of the user's teams.
    pub grants: Vec<GrantRecord>,
    /// The organizations the user is a member of (through any team).
    pub orgs: Vec<String>,
}

/// Why a request is refused (the dispatcher answers it with the same status and text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 404: the resource does not exist, or the caller may not know that it does.
    NotFound(String),
    /// 403: the caller may see the resource but lacks the role (named in the message).
    Forbidden(String),
    /// 400: the request is ambiguous (a create that names no organization).
    BadRequest(String),
}

/// What an allowed request may go on to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// For a create: the organization the new resource goes to; for a list in an
    /// organization's namespace: that organization.
    pub org: Option<String>,
}

impl Principal {
    /// Loads a signed-in user's principal; `None` when the user no longer exists.
    pub async fn load(store: &Store, username: &str) -> Result<Option<Principal>, StoreError> {
        let Some(user) = store.access_user(username).await? else {
            return Ok(None);
        };
        let (grants, orgs) = if user.admin {
            (Vec::new(), Vec::new())
        } else {
            (
                store.grants_of(username).await?,
                store.orgs_of(username).await?,
            )
        };
        Ok(Some(Principal {
            username: user.username,
            admin: user.admin,
            grants,
            orgs,
        }))
    }

    /// The server administrator as a principal (in-process callers and tests).
    pub fn administrator(username: &str) -> Principal {
        Principal {
            username: username.to_owned(),
            admin: true,
            ..Principal::default()
        }
    }

    /// The caller's role on resource `resource` owned as `owner`; `None`: it may not even
    /// view it. The server administrator is `admin` everywhere.
    pub fn role_on(&self, resource: &str, owner: Option<&Owner>) -> Option<Role> {
        if self.admin {
            return Some(Role::Admin);
        }
        let owner = owner?;
        self.grants
            .iter()
            .filter(|g| g.org == owner.org)
            .filter(|g| {
                g.resource == ALL
                    || g.resource == resource
                    || owner.parent.as_deref() == Some(g.resource.as_str())
            })
            .map(|g| g.role)
            .max()
    }

    /// The caller's role on all of organization `org` (its `*` grants); members of the
    /// organization without one still view the organization itself (its teams, grants).
    pub fn org_role(&self, org: &str) -> Option<Role> {
        if self.admin {
            return Some(Role::Admin);
        }
        let all = self
            .grants
            .iter()
            .filter(|g| g.org == org && g.resource == ALL)
            .map(|g| g.role)
            .max();
        all.or_else(|| self.orgs.iter().any(|o| o == org).then_some(Role::View))
    }

    /// The organizations where the caller may create (`manage` on everything).
    fn creatable_orgs(&self, need: Role) -> Vec<String> {
        let mut orgs: Vec<String> = self
            .grants
            .iter()
            .filter(|g| g.resource == ALL && g.role >= need)
            .map(|g| g.org.clone())
            .collect();
        orgs.sort();
        orgs.dedup();
        orgs
    }
}

/// What a list may show a caller: everything (the server administrator), or what its
/// grants let it view; in a namespaced list (`/api/infra/v1/<org>/nodecluster/`), only
/// that organization's part of it.
#[derive(Debug, Clone)]
pub struct Viewer {
    principal: Principal,
    owners: Option<std::collections::HashMap<String, Owner>>,
    /// The organization the path's namespace names, if any.
    org: Option<String>,
}

impl Viewer {
    /// The viewer of `principal`, cut to organization `org` when the list was namespaced
    /// (`Allowed::org` of a `Visible` route); loads the owners table unless nothing is cut.
    pub async fn of(
        store: &Store,
        principal: &Principal,
        org: Option<&str>,
    ) -> Result<Viewer, StoreError> {
        let owners = if principal.admin && org.is_none() {
            None
        } else {
            Some(store.owners().await?)
        };
        Ok(Viewer {
            principal: principal.clone(),
            owners,
            org: org.map(str::to_owned),
        })
    }

    /// Everything (the server administrator, and the system's own callers).
    pub fn everything() -> Viewer {
        Viewer {
            principal: Principal::administrator(""),
            owners: None,
            org: None,
        }
    }

    /// `None` for the server administrator, else the user whose grants cut SQL lists.
    pub fn member(&self) -> Option<&str> {
        (!self.principal.admin).then_some(self.principal.username.as_str())
    }

    /// The organization a namespaced list is cut to.
    pub fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }

    /// Whether lists are shown whole (the administrator, without a namespace).
    pub fn sees_everything(&self) -> bool {
        self.owners.is_none()
    }

    /// Whether the caller may view the node cluster or swarm `uuid` (in the namespace's
    /// organization, when there is one).
    pub fn sees(&self, uuid: &str) -> bool {
        match &self.owners {
            None => true,
            Some(owners) => {
                let owner = owners.get(uuid);
                let in_org = match &self.org {
                    Some(org) => owner.is_some_and(|o| o.org == *org),
                    None => true,
                };
                in_org && self.principal.role_on(uuid, owner).is_some()
            }
        }
    }

    /// Whether the caller may view a node of cluster `cluster` (`None`: bring-your-own).
    pub fn sees_node_of(&self, cluster: Option<&str>) -> bool {
        match cluster {
            Some(cluster) => self.sees(cluster),
            None => self.owners.is_none(),
        }
    }

    /// Whether the caller may view an organization (only the namespace's, in a namespace).
    pub fn sees_org(&self, org: &str) -> bool {
        self.org.as_deref().is_none_or(|only| only == org) && self.principal.org_role(org).is_some()
    }

    pub fn is_admin(&self) -> bool {
        self.principal.admin
    }

    pub fn username(&self) -> &str {
        &self.principal.username
    }
}

/// The 404 a handler gives for a resource that does not exist; [`authorize`] gives the
/// same for one the caller may not view.
pub fn not_found(kind: &str, id: &str) -> Refusal {
    Refusal::NotFound(format!("{kind} '{id}' not found"))
}

fn forbidden(need: Role, held: Role, what: &str) -> Refusal {
    Refusal::Forbidden(format!(
        "this needs the '{need}' role on {what}; you have '{held}'"
    ))
}

/// A resource a route acts on, resolved to its owner.
struct Target {
    /// The uuid grants name (a node's cluster, an action's object's cluster or swarm).
    resource: String,
    owner: Option<Owner>,
    /// How a refusal names it ("node cluster 'x'"), and the 404 for it.
    kind: &'static str,
    id: String,
}

/// Resolves the resource behind a route; `Err` is the 404 of one that does not exist.
async fn target(store: &Store, route: &Route) -> Result<Result<Target, Refusal>, StoreError> {
    let (kind, id) = match route {
        Route::Cluster(uuid) | Route::ClusterDeploy(uuid) => ("node cluster", uuid),
        Route::Swarm(uuid) => ("swarm", uuid),
        Route::Node(uuid) | Route::NodeHealthCheck(uuid) => ("node", uuid),
        Route::Action(uuid)
        | Route::ActionCancel(uuid)
        | Route::ActionRetry(uuid)
        | Route::ActionLogs(uuid) => ("action", uuid),
        _ => return Ok(Err(Refusal::BadRequest("no resource in this path".into()))),
    };
    let missing = || Ok(Err(not_found(kind, id)));
    let resource = match kind {
        "node" => match store.node(id).await? {
            // A bring-your-own node: owned by no organization.
            Some(node) => node.cluster_uuid.unwrap_or_default(),
            None => return missing(),
        },
        "action" => {
            let Some(action) = store.action(id).await? else {
                return missing();
            };
            match uri::Resource::parse(&action.object_uri) {
                Some(uri::Resource::NodeCluster { uuid } | uri::Resource::Swarm { uuid }) => uuid,
                Some(uri::Resource::Node { uuid }) => {
                    store.cluster_of_node(&uuid).await?.unwrap_or_default()
                }
                // Actions on nothing an organization owns: the administrator's.
                _ => String::new(),
            }
        }
        _ => id.clone(),
    };
    let owner = if resource.is_empty() {
        None
    } else {
        store.owner(&resource).await?
    };
    if owner.is_none() && matches!(kind, "node cluster" | "swarm") {
        // Not owned: it does not exist (every create records its owner).
        return missing();
    }
    Ok(Ok(Target {
        resource,
        owner,
        kind,
        id: id.clone(),
    }))
}

/// The organization a create goes to: the namespace if it names one, else the caller's
/// only organization where it may create, else `default` for the server administrator.
fn create_org(
    principal: &Principal,
    namespace: Option<&str>,
    orgs: &[String],
    need: Role,
) -> Result<String, Refusal> {
    if let Some(namespace) = namespace.filter(|ns| *ns != principal.username) {
        if !orgs.iter().any(|o| o == namespace) {
            return Err(not_found("organization", namespace));
        }
        return match principal.org_role(namespace) {
            None => Err(not_found("organization", namespace)),
            Some(held) if held < need => Err(forbidden(
                need,
                held,
                &format!("all of organization '{namespace}'"),
            )),
            Some(_) => Ok(namespace.to_owned()),
        };
    }
    if principal.admin {
        return Ok(DEFAULT_ORG.to_owned());
    }
    match principal.creatable_orgs(need).as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Refusal::Forbidden(format!(
            "this needs the '{need}' role on all of an organization; you have it on none"
        ))),
        several => Err(Refusal::BadRequest(format!(
            "organization: you may create in {}; name one in the path (/api/infra/v1/<org>/…, `--org` in the CLI)",
            several.join(", ")
        ))),
    }
}

/// Decides a request (see the module docs). `namespace` is the path's namespace segment.
pub async fn authorize(
    store: &Store,
    principal: &Principal,
    route: &Route,
    access: Access,
    namespace: Option<&str>,
) -> Result<Result<Allowed, Refusal>, StoreError> {
    let allowed = Ok(Ok(Allowed::default()));
    // A namespace is the caller's own name or an organization it may view.
    if let Some(ns) = namespace
        && ns != principal.username
        && (principal.org_role(ns).is_none() || !store.orgs().await?.iter().any(|(o, _)| o == ns))
    {
        return Ok(Err(Refusal::NotFound(format!(
            "namespace '{ns}' not found"
        ))));
    }
    match access {
        // A list in an organization's namespace shows only that organization's part.
        Access::Visible => Ok(Ok(Allowed {
            org: namespace
                .filter(|ns| *ns != principal.username)
                .map(str::to_owned),
        })),
        Access::Anyone => allowed,
        Access::ServerAdmin if principal.admin => allowed,
        Access::ServerAdmin => Ok(Err(Refusal::Forbidden(
            "this needs the server administrator".into(),
        ))),
        Access::SelfOrAdmin => {
            let named = match route {
                Route::User(name)
                | Route::ApiKeys(name)
                | Route::ApiKey(name, _)
                | Route::Bundles(name)
                | Route::Bundle(name, _) => name,
                _ => return allowed,
            };
            if principal.admin || *named == principal.username {
                allowed
            } else {
                Ok(Err(not_found("user", named)))
            }
        }
        Access::Org(need) => {
            let org = match route {
                Route::Org(org)
                | Route::Teams(org)
                | Route::Team(org, _)
                | Route::Grants(org)
                | Route::Grant(org, _) => org,
                _ => return allowed,
            };
            let exists = store.orgs().await?.iter().any(|(o, _)| o == org);
            match principal.org_role(org).filter(|_| exists) {
                None => Ok(Err(not_found("organization", org))),
                Some(held) if held < need => {
                    Ok(Err(forbidden(need, held, &format!("organization '{org}'"))))
                }
                Some(_) => allowed,
            }
        }
        Access::Create(need) => {
            let orgs: Vec<String> = store.orgs().await?.into_iter().map(|(o, _)| o).collect();
            Ok(create_org(principal, namespace, &orgs, need).map(|org| Allowed { org: Some(org) }))
        }
        Access::Resource(need) => {
            let target = match target(store, route).await? {
                Ok(target) => target,
                Err(refusal) => return Ok(Err(refusal)),
            };
            Ok(
                match principal.role_on(&target.resource, target.owner.as_ref()) {
                    None => Err(not_found(target.kind, &target.id)),
                    Some(held) if held < need => Err(forbidden(
                        need,
                        held,
                        &format!("{} '{}'", target.kind, target.id),
                    )),
                    Some(_) => Ok(Allowed::default()),
                },
            )
        }
    }
}

/// Whether the caller may view the object an event is about: a node cluster or swarm by
/// its own URI, a node by its cluster (its parent), an action by its object (its parent).
/// Events of bring-your-own nodes and of the access subsystem are the administrator's.
/// `org`: the stream was opened in an organization's namespace; only its events are seen.
pub async fn sees_event(
    store: &Store,
    principal: &Principal,
    event: &flotilla_api::Event,
    org: Option<&str>,
) -> Result<bool, StoreError> {
    if principal.admin && org.is_none() {
        return Ok(true);
    }
    let subject = match uri::Resource::parse(&event.resource_uri) {
        Some(uri::Resource::NodeCluster { uuid } | uri::Resource::Swarm { uuid }) => Some(uuid),
        _ => match event.parents.first().and_then(|p| uri::Resource::parse(p)) {
            Some(uri::Resource::NodeCluster { uuid } | uri::Resource::Swarm { uuid }) => Some(uuid),
            Some(uri::Resource::Node { uuid }) => store.cluster_of_node(&uuid).await?,
            _ => None,
        },
    };
    let Some(resource) = subject else {
        return Ok(false);
    };
    let owner = store.owner(&resource).await?;
    if let Some(org) = org
        && owner.as_ref().is_none_or(|o| o.org != org)
    {
        return Ok(false);
    }
    Ok(principal.role_on(&resource, owner.as_ref()).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(org: &str, resource: &str, role: Role) -> GrantRecord {
        GrantRecord {
            id: format!("{org}-{resource}"),
            org: org.into(),
            team: "t".into(),
            resource: resource.into(),
            role,
            created_at: 0,
        }
    }

    fn member(grants: Vec<GrantRecord>) -> Principal {
        Principal {
            username: "alice".into(),
            admin: false,
            orgs: grants.iter().map(|g| g.org.clone()).collect(),
            grants,
        }
    }

    fn owned(org: &str, parent: Option<&str>) -> Owner {
        Owner {
            org: org.into(),
            parent: parent.map(str::to_owned),
        }
    }

    #[test]
    fn the_strongest_matching_grant_in_the_owning_org_wins() {
        let alice = member(vec![
            grant("a", ALL, Role::View),
            grant("a", "c1", Role::Operate),
            grant("a", "s1", Role::Manage),
            grant("b", ALL, Role::Admin),
        ]);
        assert_eq!(
            alice.role_on("c1", Some(&owned("a", None))),
            Some(Role::Operate)
        );
        assert_eq!(
            alice.role_on("c2", Some(&owned("a", None))),
            Some(Role::View)
        );
        // A swarm's cluster follows the swarm.
        assert_eq!(
            alice.role_on("c3", Some(&owned("a", Some("s1")))),
            Some(Role::Manage)
        );
        // A grant names a resource only inside its organization.
        let bob = member(vec![grant("b", "c1", Role::Admin)]);
        assert_eq!(bob.role_on("c1", Some(&owned("a", None))), None);
        assert_eq!(alice.role_on("x", None), None, "bring-your-own: admin only");
        assert_eq!(
            Principal::administrator("admin").role_on("x", None),
            Some(Role::Admin)
        );
    }

    #[test]
    fn members_view_their_org_and_creates_need_manage_on_all_of_it() {
        let alice = member(vec![grant("a", "c1", Role::Operate)]);
        assert_eq!(alice.org_role("a"), Some(Role::View));
        assert_eq!(alice.org_role("b"), None);
        let orgs = vec!["a".to_owned(), "b".to_owned()];
        assert!(matches!(
            create_org(&alice, None, &orgs, Role::Manage),
            Err(Refusal::Forbidden(m)) if m.contains("'manage'")
        ));
        assert!(matches!(
            create_org(&alice, Some("a"), &orgs, Role::Manage),
            Err(Refusal::Forbidden(m)) if m.contains("'manage'") && m.contains("'view'")
        ));
        assert!(matches!(
            create_org(&alice, Some("b"), &orgs, Role::Manage),
            Err(Refusal::NotFound(_))
        ));
        let carol = member(vec![
            grant("a", ALL, Role::Manage),
            grant("b", ALL, Role::Admin),
        ]);
        assert!(matches!(
            create_org(&carol, None, &orgs, Role::Manage),
            Err(Refusal::BadRequest(m)) if m.contains("a, b")
        ));
        assert_eq!(
            create_org(&carol, Some("b"), &orgs, Role::Manage),
            Ok("b".to_owned())
        );
        assert_eq!(
            create_org(
                &Principal::administrator("admin"),
                None,
                &orgs,
                Role::Manage
            ),
            Ok(DEFAULT_ORG.to_owned())
        );
    }
}
