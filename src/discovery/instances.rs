//! Running application instances in the tree: an AppInstance whose state
//! is `Running` and that has endpoints (its PackageSet is available and
//! active on them, see `status.endpoints`) is the group `APP/ID.ROLE` —
//! service: the application; group: the labels `ID` and `ROLE`, so an
//! application follows it with `Follower::labels(tree, APP, &[ID, ROLE])`.
//!
//! - **Containers**: one per endpoint, named after its node (the
//!   NodeInstall), at the node's address, with the instance's ports as
//!   port mappings by name (`instance_port` the first by name).
//! - **Config**: `app`, `version`, `id`, `role`, `namespace` and `home`
//!   (the instance's values are not published: they may hold secrets).
//! - **Owner of a path**: a ServiceGroup or a Cluster that resolves to it
//!   wins; instances of one path (one id and role, in two namespaces)
//!   give it to the oldest.
//! - **Removal**: a stopped, failed or deleted instance's group is
//!   removed; in a full pass, that of every instance that publishes
//!   nothing, so that an operator that restarted removes what it did not
//!   publish itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

use super::clusters::{GroupPath, Refusal};
use super::model::{ContainerInfo, GroupConfig, PortMapping};
use super::paths;
use super::publisher::GroupState;
use crate::api::{AppInstance, InstanceState};

/// An instance: (namespace, name).
pub type InstanceKey = (String, String);

/// The key of `instance`.
pub fn key(instance: &AppInstance) -> InstanceKey {
    (
        instance.namespace().unwrap_or_default(),
        instance.name_any(),
    )
}

/// The path an instance publishes at, whether it publishes or not.
pub fn path(instance: &AppInstance) -> Result<GroupPath, Refusal> {
    let spec = &instance.spec;
    let refused = || Refusal::Instance {
        id: spec.id.clone(),
        role: spec.role.clone(),
    };
    paths::validate_service(&spec.app).map_err(|_| Refusal::Service(spec.app.clone()))?;
    if spec.role.contains('.') || spec.id.contains('.') {
        return Err(refused());
    }
    let group = paths::encode_group(&[&spec.id, &spec.role]).map_err(|_| refused())?;
    Ok((spec.app.clone(), group))
}

/// What `instance` should publish: `None` when it publishes nothing (not
/// running, no endpoints, being deleted).
pub fn group(instance: &AppInstance) -> Result<Option<GroupState>, Refusal> {
    let (service, group) = path(instance)?;
    let status = instance.status.clone().unwrap_or_default();
    let running = instance.spec.state == InstanceState::Running
        && instance.metadata.deletion_timestamp.is_none()
        && !status.endpoints.is_empty();
    if !running {
        return Ok(None);
    }
    let containers = status
        .endpoints
        .iter()
        .map(|e| {
            let port_mappings: Vec<PortMapping> = e
                .ports
                .iter()
                .map(|(name, port)| PortMapping {
                    name: Some(name.clone()),
                    container_port: *port,
                    host_port: *port,
                })
                .collect();
            let info = ContainerInfo {
                instance_host: e.address.clone(),
                instance_port: port_mappings.first().map(|p| p.host_port),
                port_mappings,
                instance_name: e.node.clone(),
                node_name: Some(e.node.clone()),
            };
            (e.node.clone(), info)
        })
        .collect();
    let spec = &instance.spec;
    let mut config = GroupConfig::from([
        ("app".to_owned(), spec.app.clone()),
        ("version".to_owned(), spec.version.clone()),
        ("id".to_owned(), spec.id.clone()),
        ("role".to_owned(), spec.role.clone()),
        (
            "namespace".to_owned(),
            instance.namespace().unwrap_or_default(),
        ),
    ]);
    if let Some(home) = status.home {
        config.insert("home".to_owned(), home);
    }
    Ok(Some(GroupState {
        service,
        group,
        config,
        containers,
    }))
}

/// What one flush does for instances.
#[derive(Debug, Default)]
pub(crate) struct Work {
    /// The groups to publish.
    pub publish: Vec<GroupState>,
    /// The groups to remove: an instance's, wanted by no one.
    pub remove: Vec<GroupPath>,
    /// Every instance group and its owner once this work is done.
    owners: HashMap<GroupPath, InstanceKey>,
    /// What is refused now.
    pub refusals: Vec<(InstanceKey, Refusal)>,
}

/// The instances' state in the publisher loop.
pub(crate) struct InstanceSync {
    instances: Store<AppInstance>,
    recorder: Option<Recorder>,
    dirty: HashSet<InstanceKey>,
    /// The groups instances published, with their owner.
    owners: HashMap<GroupPath, InstanceKey>,
    /// The refusals already warned about.
    warned: HashSet<(InstanceKey, Refusal)>,
}

impl InstanceSync {
    /// AppInstances from this store; refusals are reported as Warning
    /// events through `recorder` too.
    pub fn new(instances: Store<AppInstance>, recorder: Option<Recorder>) -> Self {
        Self {
            instances,
            recorder,
            dirty: HashSet::new(),
            owners: HashMap::new(),
            warned: HashSet::new(),
        }
    }

    /// The AppInstances' store.
    pub fn store(&self) -> Store<AppInstance> {
        self.instances.clone()
    }

    /// Whether an instance changed since the last flush.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes an AppInstance event in; `true` when everything should be
    /// published again (a re-list may hide deletions).
    pub fn on_instance(&mut self, event: &watcher::Event<AppInstance>) -> bool {
        match event {
            watcher::Event::Apply(i) | watcher::Event::Delete(i) => {
                self.dirty.insert(key(i));
                false
            }
            watcher::Event::InitDone => true,
            watcher::Event::Init | watcher::Event::InitApply(_) => false,
        }
    }

    /// A group's keys were removed (a ServiceGroup left its path): the
    /// instances that resolve to it publish at the next flush.
    pub fn path_freed(&mut self, service: &str, group: &str) {
        let named = self
            .instances
            .state()
            .into_iter()
            .filter(|i| path(i).is_ok_and(|(s, g)| s == service && g == group))
            .map(|i| key(&i));
        self.dirty.extend(named);
    }

    /// What to do now: every instance's group when `full`, else those of
    /// changed instances and of paths that changed hands. `taken` are the
    /// paths ServiceGroups and Clusters publish, with their owner.
    pub fn work(&self, full: bool, taken: &BTreeMap<GroupPath, String>) -> Work {
        let mut all: Vec<Arc<AppInstance>> = self.instances.state();
        all.sort_by_key(|i| (i.metadata.creation_timestamp.clone().map(|t| t.0), key(i)));
        let mut work = Work::default();
        let mut quiet = BTreeSet::new();
        for instance in &all {
            let owner = key(instance);
            let state = match group(instance) {
                Ok(Some(state)) => state,
                Ok(None) => {
                    quiet.extend(path(instance).ok());
                    continue;
                }
                Err(refusal) => {
                    work.refusals.push((owner, refusal));
                    continue;
                }
            };
            let at = (state.service.clone(), state.group.clone());
            let by = taken.get(&at).cloned().or_else(|| {
                let (ns, name) = work.owners.get(&at)?;
                Some(format!("AppInstance {ns}/{name}"))
            });
            if let Some(by) = by {
                let refusal = Refusal::Taken {
                    service: at.0,
                    group: at.1,
                    owner: by,
                };
                work.refusals.push((owner, refusal));
                continue;
            }
            if full || self.dirty.contains(&owner) || self.owners.get(&at) != Some(&owner) {
                work.publish.push(state);
            }
            work.owners.insert(at, owner);
        }
        let quiet = quiet.into_iter().filter(|_| full);
        work.remove = self
            .owners
            .keys()
            .cloned()
            .chain(quiet)
            .filter(|p| !work.owners.contains_key(p) && !taken.contains_key(p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        work
    }

    /// The work was written: remember what is published now.
    pub fn done(&mut self, work: Work) {
        self.owners = work.owners;
        self.dirty.clear();
    }

    /// Warns (log and a Warning event on the instance) of each refusal
    /// not warned of yet.
    pub async fn warn(&mut self, work: &Work) {
        let recorder = self.recorder.as_ref();
        super::cluster_sync::warn_new(recorder, &self.instances, &mut self.warned, &work.refusals)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector;
    use serde_json::json;

    use super::*;

    fn instance(ns: &str, id: &str, state: &str, endpoints: serde_json::Value) -> AppInstance {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "AppInstance",
            "metadata": { "name": format!("web-{id}"), "namespace": ns,
                "creationTimestamp": "2026-01-01T00:00:00Z" },
            "spec": { "app": "web", "version": "1.0.0", "id": id, "role": "prod", "state": state },
            "status": { "phase": "Running", "home": format!("/apps/prod/web/{id}"), "endpoints": endpoints }
        }))
        .unwrap()
    }

    fn one_node() -> serde_json::Value {
        json!([{ "node": "box-1", "address": "10.0.0.1", "ports": { "http": 8080, "admin": 9000 } }])
    }

    fn store(objects: Vec<AppInstance>) -> Store<AppInstance> {
        let (store, mut writer) = reflector::store::<AppInstance>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }

    #[test]
    fn a_running_instance_is_the_group_of_its_id_and_role_at_its_nodes() {
        let state = group(&instance("team", "one", "Running", one_node()))
            .unwrap()
            .unwrap();
        assert_eq!(state.service, "web");
        assert_eq!(state.group, paths::encode_group(&["one", "prod"]).unwrap());
        assert_eq!(state.config["home"], "/apps/prod/web/one");
        assert_eq!(state.config["namespace"], "team");
        let info = &state.containers["box-1"];
        assert_eq!(info.instance_host, "10.0.0.1");
        assert_eq!(info.instance_port, Some(9000), "the first port by name");
        assert_eq!(info.port_mappings.len(), 2);
        assert_eq!(info.node_name.as_deref(), Some("box-1"));
        assert_eq!(
            group(&instance("team", "one", "Installed", one_node())).unwrap(),
            None,
            "a stopped instance publishes nothing"
        );
        assert_eq!(
            group(&instance("team", "one", "Running", json!([]))).unwrap(),
            None,
            "nor one without endpoints"
        );
        let mut dotted = instance("team", "one", "Running", one_node());
        dotted.spec.role = "a.b".into();
        assert!(matches!(group(&dotted), Err(Refusal::Instance { .. })));
    }

    #[test]
    fn a_stopped_instance_is_removed_and_a_taken_path_is_refused() {
        let mut sync = InstanceSync::new(
            store(vec![instance("team", "one", "Running", one_node())]),
            None,
        );
        let none = BTreeMap::new();
        let first = sync.work(false, &none);
        assert_eq!(first.publish.len(), 1, "never published: published now");
        sync.done(first);
        assert!(
            sync.work(false, &none).publish.is_empty(),
            "nothing changed"
        );
        assert_eq!(sync.work(true, &none).publish.len(), 1, "a full pass");

        let stopped = instance("team", "one", "Installed", one_node());
        sync.instances = store(vec![stopped.clone()]);
        assert!(!sync.on_instance(&watcher::Event::Apply(stopped)));
        assert!(sync.is_dirty());
        let work = sync.work(false, &none);
        let path = ("web".to_owned(), "one.prod".to_owned());
        assert_eq!(work.remove, vec![path.clone()]);
        sync.done(work);
        assert!(sync.work(false, &none).remove.is_empty(), "removed once");
        assert_eq!(
            sync.work(true, &none).remove,
            vec![path.clone()],
            "and in every full pass, for an operator that restarted"
        );

        let taken = BTreeMap::from([(path.clone(), "ServiceGroup team/web".to_owned())]);
        let sync = InstanceSync::new(
            store(vec![instance("team", "one", "Running", one_node())]),
            None,
        );
        let work = sync.work(true, &taken);
        assert!(work.publish.is_empty() && work.remove.is_empty());
        assert!(
            work.refusals[0]
                .1
                .to_string()
                .contains("ServiceGroup team/web")
        );
    }

    #[test]
    fn of_two_instances_at_one_path_the_oldest_publishes() {
        let old = instance("a", "one", "Running", one_node());
        let mut young = instance("b", "one", "Running", one_node());
        young.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_900_000_000).unwrap(),
            ));
        let sync = InstanceSync::new(store(vec![young, old]), None);
        let work = sync.work(false, &BTreeMap::new());
        assert_eq!(work.publish.len(), 1);
        assert_eq!(work.publish[0].config["namespace"], "a");
        assert_eq!(work.refusals.len(), 1);
        assert!(
            work.refusals[0]
                .1
                .to_string()
                .contains("AppInstance a/web-one")
        );
    }
}
