//! The swarm API: create, list, inspect and remove Docker swarms.
//!
//! Design decisions:
//! * A swarm is two node clusters plus what is the swarm's own ([`crate::store::SwarmRecord`]).
//!   Creating one validates both clusters exactly as `POST nodecluster/` would (errors
//!   name the swarm's field) and stores the swarm, both clusters (already `Deploying`) and
//!   their actions in one transaction; the node clusters' reconcilers launch the nodes
//!   and the swarm worker ([`crate::swarm`]) forms the swarm as their agents register.
//! * Scaling the workers is `PATCH nodecluster/{workers}/` — the original `docker-cloud
//!   nodecluster scale` works — and new nodes join by themselves: the worker plans a join
//!   for every node of the swarm's clusters that is not in the swarm.
//! * Rendering reads the agents' last reports: roles, availability and leader come from the
//!   swarm's node list as a manager reported it.

use flotilla_api::agent::ServiceInfo;
use flotilla_api::{self as api, action_state, date, uri};
use flotilla_core::plan::swarm as planner;
use flotilla_core::spec::SwarmSpec;
use flotilla_core::state::{ClusterEvent, ClusterState, NodeState};
use serde_json::Value;

use super::{App, AppError, AppResult, Caller, Outcome, new_uuid};
use crate::authz::Viewer;
use crate::store::access::DEFAULT_ORG;
use crate::store::{ClusterRecord, NewSwarm, SwarmRecord};
use crate::swarm::SwarmView;
use flotilla_core::cloud::Cloud;

/// A service as a manager of `view`'s swarm last reported it, its tasks placed on
/// Flotilla's nodes.
fn render_service(view: &SwarmView, service: &ServiceInfo) -> api::SwarmService {
    let node_of = |docker_id: &str| {
        view.nodes.iter().find_map(|(node, _)| {
            let reported = node
                .engine
                .report
                .as_ref()
                .and_then(|r| r.engine.as_ref())
                .and_then(|e| e.swarm.node_id.as_deref())
                .or(node.engine.last_swarm_node_id.as_deref());
            (reported == Some(docker_id)).then(|| uri::node(&node.uuid))
        })
    };
    api::SwarmService {
        id: service.id.clone(),
        name: service.name.clone(),
        swarm: uri::swarm(&view.swarm.uuid),
        mode: service.mode.clone(),
        replicas: service.replicas,
        running: service
            .tasks
            .iter()
            .filter(|t| t.state == "running")
            .count() as u32,
        tasks: service
            .tasks
            .iter()
            .map(|t| api::SwarmServiceTask {
                id: t.id.clone(),
                node: node_of(&t.node_id),
                docker_node_id: t.node_id.clone(),
                state: t.state.clone(),
                desired_state: t.desired_state.clone(),
                error: t.error.clone(),
            })
            .collect(),
        ports: service.ports.clone(),
    }
}

/// The label of a swarm's create action.
pub const LABEL_SWARM_CREATE: &str = "Swarm Create";
/// The label of a swarm's terminate action.
pub const LABEL_SWARM_TERMINATE: &str = "Swarm Terminate";

impl<C: Cloud + 'static> App<C> {
    async fn load_swarm(&self, uuid: &str) -> AppResult<SwarmRecord> {
        self.store
            .swarm(uuid)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("swarm '{uuid}' not found")))
    }

    async fn render_swarm(&self, swarm: SwarmRecord) -> AppResult<api::Swarm> {
        let region = match self.store.cluster(&swarm.manager_cluster).await? {
            Some(cluster) => uri::region(crate::catalog::PROVIDER, &cluster.spec.region),
            None => String::new(),
        };
        let worker_count = match self.store.cluster(&swarm.worker_cluster).await? {
            Some(cluster) => cluster.spec.target_num_nodes,
            None => 0,
        };
        let view = SwarmView::load(&self.store, swarm).await?;
        let list = view.node_list().unwrap_or_default();
        let nodes = view
            .nodes
            .iter()
            .filter(|(node, _)| node.state != NodeState::Terminated)
            .map(|(node, role)| {
                let swarm = node
                    .engine
                    .report
                    .as_ref()
                    .and_then(|r| r.engine.as_ref())
                    .map(|e| &e.swarm);
                let node_id = swarm
                    .filter(|s| {
                        let cluster = view.cluster_of(s);
                        cluster.is_some() && cluster == view.swarm.cluster_id
                    })
                    .and_then(|s| s.node_id.clone());
                let listed = node_id
                    .as_deref()
                    .and_then(|id| list.iter().find(|n| n.id == id));
                api::SwarmMember {
                    node: uri::node(&node.uuid),
                    state: node.state.to_string(),
                    role: role.as_str().to_owned(),
                    availability_zone: node.availability_zone.clone(),
                    docker_node_id: node_id.clone(),
                    docker_status: listed.map(|n| n.status.clone()),
                    availability: listed.map(|n| n.availability.clone()),
                    manager_status: listed.and_then(|n| n.reachability.clone()),
                    leader: listed.is_some_and(|n| n.leader),
                    engine_swarm_state: swarm.map(|s| s.state.clone()),
                }
            })
            .collect();
        let swarm = &view.swarm;
        Ok(api::Swarm {
            uuid: swarm.uuid.clone(),
            resource_uri: uri::swarm(&swarm.uuid),
            name: swarm.name.clone(),
            state: swarm.state.to_string(),
            region,
            manager_count: swarm.managers,
            worker_count,
            manager_cluster: uri::node_cluster(&swarm.manager_cluster),
            worker_cluster: uri::node_cluster(&swarm.worker_cluster),
            cluster_id: swarm.cluster_id.clone(),
            bootstrap_node: swarm.bootstrap_node.as_deref().map(uri::node),
            services: view
                .services()
                .unwrap_or_default()
                .iter()
                .map(|service| render_service(&view, service))
                .collect(),
            nodes,
            load_balancer: swarm.load_balancer.clone(),
            created_datetime: Some(date::format_unix(swarm.created_at)),
            deployed_datetime: swarm.deployed_at.map(date::format_unix),
            destroyed_datetime: swarm.destroyed_at.map(date::format_unix),
            current_action: swarm.current_action.as_deref().map(uri::action),
        })
    }

    /// `GET swarm/`.
    pub async fn swarms(&self, viewer: &Viewer) -> AppResult<Vec<api::Swarm>> {
        let mut rendered = Vec::new();
        for swarm in self.store.swarms().await? {
            if !viewer.sees(&swarm.uuid) {
                continue;
            }
            rendered.push(self.render_swarm(swarm).await?);
        }
        Ok(rendered)
    }

    /// `GET swarm/{uuid}/`.
    pub async fn swarm(&self, uuid: &str) -> AppResult<api::Swarm> {
        let swarm = self.load_swarm(uuid).await?;
        self.render_swarm(swarm).await
    }

    /// `GET /services/{id}`: a service (by id, unique id prefix, or name) of any live swarm,
    /// from its manager's last report.
    pub async fn swarm_service(&self, viewer: &Viewer, id: &str) -> AppResult<api::SwarmService> {
        for swarm in self.store.swarms().await? {
            if swarm.state == ClusterState::Terminated || !viewer.sees(&swarm.uuid) {
                continue;
            }
            let view = SwarmView::load(&self.store, swarm).await?;
            let Some(services) = view.services() else {
                continue;
            };
            let found = services
                .iter()
                .find(|s| s.id == id || s.name == id)
                .or_else(|| {
                    let mut prefixed = services.iter().filter(|s| s.id.starts_with(id));
                    match (prefixed.next(), prefixed.next()) {
                        (Some(one), None) => Some(one),
                        _ => None,
                    }
                });
            let Some(service) = found else {
                continue;
            };
            return Ok(render_service(&view, service));
        }
        Err(AppError::NotFound(format!(
            "no swarm has a service '{id}' (as its managers last reported)"
        )))
    }

    /// `POST swarm/`: validates, stores the swarm with its two clusters, and starts them.
    pub async fn create_swarm(
        &self,
        caller: &Caller,
        body: &Value,
    ) -> AppResult<Outcome<api::Swarm>> {
        let spec = SwarmSpec::from_json(body).map_err(|e| AppError::BadRequest(e.to_string()))?;
        for (cluster, role) in [(&spec.managers, "manager"), (&spec.workers, "worker")] {
            self.check_offered(cluster)
                .await
                .map_err(|error| match error {
                    AppError::BadRequest(message) => {
                        AppError::BadRequest(match message.strip_prefix("node_type:") {
                            Some(rest) => format!("{role}_node_type:{rest}"),
                            None => message,
                        })
                    }
                    other => other,
                })?;
        }
        // Names are unique per organization (see `check_name_free`): only the caller's
        // organization's swarms and clusters are compared, so a refusal reveals nothing of
        // another organization's.
        let org = caller.org.as_deref().unwrap_or(DEFAULT_ORG);
        let owners = self.store.owners().await?;
        let live_swarm = self.store.swarms().await?.into_iter().any(|s| {
            s.name == spec.name
                && s.state != ClusterState::Terminated
                && owners.get(&s.uuid).map_or(DEFAULT_ORG, |o| o.org.as_str()) == org
        });
        if live_swarm {
            return Err(AppError::Conflict(format!(
                "name: a swarm named '{}' already exists",
                spec.name
            )));
        }
        let taken = self.live_names_in(Some(org)).await?;
        for cluster in [&spec.managers, &spec.workers] {
            if taken.contains(&cluster.name) {
                return Err(AppError::Conflict(format!(
                    "name: the swarm's node cluster '{}' would clash with an existing node cluster of that name",
                    cluster.name
                )));
            }
        }
        self.check_provider_options(&spec.managers).await?;
        let uuid = new_uuid();
        let now = date::now_unix();
        let swarm_action = Self::new_action(
            caller,
            &uri::swarm(&uuid),
            LABEL_SWARM_CREATE,
            action_state::IN_PROGRESS,
        );
        let cluster = |spec: flotilla_core::ClusterSpec| {
            let uuid = new_uuid();
            let action = Self::new_action(
                caller,
                &uri::node_cluster(&uuid),
                "Node Cluster Deploy",
                action_state::IN_PROGRESS,
            );
            let record = ClusterRecord {
                uuid,
                nickname: spec.name.clone(),
                spec,
                state: ClusterState::Deploying,
                generation: 1,
                next_slot: 0,
                current_action: Some(action.uuid.clone()),
                created_at: now,
                deployed_at: None,
                destroyed_at: None,
            };
            (record, action)
        };
        // A swarm's nodes are replaced when their instance is lost (Docker for AWS's
        // auto-scaling groups did the same): a manager in the same AZ, by placement.
        let (managers, managers_action) = cluster(flotilla_core::ClusterSpec {
            auto_replace: true,
            ..spec.managers
        });
        let (workers, workers_action) = cluster(flotilla_core::ClusterSpec {
            auto_replace: true,
            ..spec.workers
        });
        let record = SwarmRecord {
            uuid: uuid.clone(),
            name: spec.name,
            state: ClusterState::Deploying,
            managers: managers.spec.target_num_nodes,
            manager_cluster: managers.uuid.clone(),
            worker_cluster: workers.uuid.clone(),
            bootstrap_node: None,
            cluster_id: None,
            tokens: None,
            current_action: Some(swarm_action.uuid.clone()),
            load_balancer: None,
            created_at: now,
            deployed_at: None,
            destroyed_at: None,
        };
        self.store
            .insert_swarm(&NewSwarm {
                swarm: &record,
                managers: &managers,
                workers: &workers,
                actions: [&swarm_action, &managers_action, &workers_action],
                org: caller.org(),
            })
            .await?;
        self.reconciler.nudge(&managers.uuid);
        self.reconciler.nudge(&workers.uuid);
        Ok(Outcome {
            object: self.render_swarm(record).await?,
            action_uri: uri::action(&swarm_action.uuid),
            accepted: true,
        })
    }

    /// `PATCH swarm/{uuid}/`: `manager_count` (1, 3, 5 or 7). Refused (409) when the change
    /// could lose the swarm's Raft quorum with the managers that are unreachable now
    /// (`plan::swarm::check_manager_change` says why and what to do); otherwise the
    /// managers' node cluster is scaled, and the swarm worker adds (or demotes) managers one
    /// at a time.
    pub async fn patch_swarm(
        &self,
        caller: &Caller,
        uuid: &str,
        body: &Value,
    ) -> AppResult<Outcome<api::Swarm>> {
        let fields = super::patch_fields(body, &["manager_count"])?;
        let target = match fields.get("manager_count") {
            None => {
                return Err(AppError::BadRequest(
                    "manager_count: this field is required".into(),
                ));
            }
            Some(value) => value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    AppError::BadRequest("manager_count: must be 1, 3, 5 or 7".into())
                })?,
        };
        let swarm = self.load_swarm(uuid).await?;
        if !matches!(
            swarm.state,
            ClusterState::Deployed | ClusterState::Deploying
        ) {
            return Err(AppError::BadRequest(format!(
                "swarm '{uuid}' is {}: its managers cannot change",
                swarm.state
            )));
        }
        let view = SwarmView::load(&self.store, swarm.clone()).await?;
        let health = planner::manager_health(&view.observed(0, &Default::default()));
        planner::check_manager_change(health, target).map_err(|refusal| match refusal.kind {
            planner::RefusalKind::NotAllowed => {
                AppError::BadRequest(format!("manager_count: {refusal}"))
            }
            _ => AppError::Conflict(format!("manager_count: {refusal}")),
        })?;
        // The managers' cluster first: a cluster that cannot scale now (still deploying)
        // refuses, and nothing changed.
        let scaled = self
            .patch_cluster(
                caller,
                &swarm.manager_cluster,
                &serde_json::json!({"target_num_nodes": target}),
            )
            .await?;
        self.store.set_swarm_managers(uuid, target).await?;
        Ok(Outcome {
            object: self.swarm(uuid).await?,
            action_uri: scaled.action_uri,
            accepted: scaled.accepted,
        })
    }

    /// `DELETE swarm/{uuid}/`: terminates both clusters; the swarm is `Terminated` when
    /// they are.
    pub async fn delete_swarm(
        &self,
        caller: &Caller,
        uuid: &str,
    ) -> AppResult<Outcome<api::Swarm>> {
        let swarm = self.load_swarm(uuid).await?;
        if matches!(
            swarm.state,
            ClusterState::Terminating | ClusterState::Terminated
        ) {
            return Err(AppError::BadRequest(format!(
                "swarm '{uuid}' is already {}",
                swarm.state
            )));
        }
        let mut clusters = Vec::new();
        for cluster in [&swarm.manager_cluster, &swarm.worker_cluster] {
            let record = self.load_cluster(cluster).await?;
            if !matches!(
                record.state,
                ClusterState::Terminating | ClusterState::Terminated
            ) {
                record
                    .state
                    .apply(ClusterEvent::Terminate)
                    .map_err(|_| {
                        AppError::BadRequest(format!(
                            "swarm '{uuid}' cannot be terminated while its node cluster '{}' is {}; try again when it is not",
                            record.spec.name, record.state
                        ))
                    })?;
                clusters.push(record.uuid);
            }
        }
        let action = Self::new_action(
            caller,
            &uri::swarm(uuid),
            LABEL_SWARM_TERMINATE,
            action_state::IN_PROGRESS,
        );
        if !self
            .store
            .transition_swarm(
                uuid,
                swarm.state,
                ClusterState::Terminating,
                None,
                Some(&action),
            )
            .await?
        {
            return Err(AppError::Conflict(format!(
                "swarm '{uuid}' changed state while this request ran; try again"
            )));
        }
        if let Some(previous) = &swarm.current_action {
            self.store
                .transition_action(
                    previous,
                    &[action_state::IN_PROGRESS],
                    action_state::CANCELED,
                    Some(date::now_unix()),
                    false,
                    false,
                )
                .await?;
        }
        for cluster in &clusters {
            self.delete_cluster(caller, cluster).await?;
        }
        Ok(Outcome {
            object: self.swarm(uuid).await?,
            action_uri: uri::action(&action.uuid),
            accepted: true,
        })
    }
}
