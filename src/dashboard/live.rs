//! A page's live stream (`GET /ui/live?view=…`): Server-Sent Events whose
//! every `update` event is a batch of htmx out-of-band swaps, each in a
//! `<template>` of its own.
//!
//! The stream watches the view's objects as the user (one reflector per
//! source), renders the view after each change (at most every
//! [`DEBOUNCE`]) and sends only the fragments that differ from what it
//! sent before: a changed row or panel replaces itself, a new row is
//! appended to its table, a gone row is deleted. The first event carries
//! every panel and every table body whole, so a reconnecting page catches
//! up. When the API server stops accepting the user's credential, the
//! stream sends a `login` event and ends; the page goes to the login page.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::channel::mpsc;
use futures::{FutureExt, SinkExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::Dashboard;
use super::nodes::{self, AgentView, Agents};
use super::views::{self, Allowed, Fragment, Rendered, Snapshot, Source, View};
use crate::api::{Cluster, ClusterPlan, NodeInstall, NodePool, PackageSet};
use crate::shared::halt::{HALT_CONFIGMAP, Halt};

/// The shortest time between two updates of a stream: changes within it
/// are sent together.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// The query of `/ui/live`.
#[derive(Debug, Default, Deserialize)]
pub struct LiveQuery {
    pub view: String,
    pub name: Option<String>,
    pub page: Option<usize>,
    pub phase: Option<String>,
    pub plural: Option<String>,
    pub namespace: Option<String>,
}

impl LiveQuery {
    /// The view the query names.
    pub fn view(&self) -> Option<View> {
        let name = || self.name.clone().filter(|n| !n.is_empty());
        match self.view.as_str() {
            "fleet" => Some(View::Fleet),
            "packageset" => Some(View::PackageSet {
                name: name()?,
                page: self.page.unwrap_or(0),
                phase: self.phase.clone().filter(|p| !p.is_empty()),
            }),
            "nodepool" => Some(View::NodePool { name: name()? }),
            "cluster" => Some(View::Cluster {
                namespace: self.namespace.clone().filter(|n| !n.is_empty())?,
                name: name()?,
            }),
            "node" => Some(View::Node { name: name()? }),
            "kind" => {
                let plural = self.plural.clone()?;
                super::columns::by_plural(&plural)?;
                Some(View::Kind { plural })
            }
            _ => None,
        }
    }
}

/// The table bodies of a view.
pub fn containers(view: &View) -> &'static [&'static str] {
    match view {
        View::Fleet => &["sets", "pools"],
        View::PackageSet { .. } => &["nodes"],
        View::NodePool { .. } => &["instances"],
        View::Kind { .. } => &["objects"],
        View::Cluster { .. } => &["layout", "tasks"],
        View::Node { .. } => &["services"],
    }
}

/// `GET /ui/live`.
pub async fn stream(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Query(query): Query<LiveQuery>,
) -> axum::response::Response {
    let Some(view) = query.view() else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "unknown view: use view=fleet, packageset&name=…, nodepool&name=…, cluster&namespace=…&name=…, node&name=… or kind&plural=…\n",
        )
            .into_response();
    };
    let (mut tx, rx) = mpsc::channel::<Result<Event, Infallible>>(16);
    match dashboard.auth().session(&headers) {
        Ok(session) => {
            tokio::spawn(run(dashboard.clone(), session.client, view, tx));
        }
        Err(_) => {
            // An EventSource cannot follow a redirect to the login page:
            // tell the page to go there.
            let _ = tx.send(Ok(login_event())).await;
        }
    }
    Sse::new(rx)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn login_event() -> Event {
    Event::default()
        .event("login")
        .data("the API server no longer accepts your credential")
}

/// The stores of a view's sources, and what they report.
struct Watches {
    halt: Option<Store<ConfigMap>>,
    sets: Option<Store<PackageSet>>,
    nodes: Option<Store<NodeInstall>>,
    pools: Option<Store<NodePool>>,
    objects: Option<Store<DynamicObject>>,
    clusters: Option<Store<Cluster>>,
    plans: Option<Store<ClusterPlan>>,
    /// Rung after every change.
    changed: Arc<Notify>,
    /// What the node's agent said last (a node's page).
    agent: Arc<std::sync::Mutex<Option<AgentView>>>,
    /// Becomes true when the API server refuses the credential.
    refused: watch::Receiver<bool>,
    /// The watch tasks, aborted when the stream ends.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Watches {
    fn start(client: &Client, view: &View, namespace: &str, selector: Option<&str>) -> Self {
        let changed = Arc::new(Notify::new());
        let (refused_tx, refused) = watch::channel(false);
        let refused_tx = Arc::new(refused_tx);
        let scoped = || crate::shared::scoped(selector);
        let mut watches = Watches {
            halt: None,
            sets: None,
            nodes: None,
            pools: None,
            objects: None,
            clusters: None,
            plans: None,
            agent: Arc::default(),
            changed: changed.clone(),
            refused,
            tasks: Vec::new(),
        };
        for source in view.sources() {
            let ctx = (changed.clone(), refused_tx.clone());
            match source {
                Source::Halt => {
                    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
                    let config = watcher::Config::default()
                        .fields(&format!("metadata.name={HALT_CONFIGMAP}"));
                    let (store, task) = reflect(api, config, (), ctx);
                    watches.halt = Some(store);
                    watches.tasks.push(task);
                }
                Source::PackageSets => {
                    let (store, task) = reflect(Api::all(client.clone()), scoped(), (), ctx);
                    watches.sets = Some(store);
                    watches.tasks.push(task);
                }
                Source::NodeInstalls => {
                    let (store, task) = reflect(Api::all(client.clone()), scoped(), (), ctx);
                    watches.nodes = Some(store);
                    watches.tasks.push(task);
                }
                Source::NodePools => {
                    let (store, task) = reflect(Api::all(client.clone()), scoped(), (), ctx);
                    watches.pools = Some(store);
                    watches.tasks.push(task);
                }
                Source::Objects(kind) => {
                    let api = Api::<DynamicObject>::all_with(client.clone(), &kind.resource);
                    let (store, task) = reflect(api, scoped(), kind.resource.clone(), ctx);
                    watches.objects = Some(store);
                    watches.tasks.push(task);
                }
                Source::Cluster(namespace, name) => {
                    let api = Api::<Cluster>::namespaced(client.clone(), &namespace);
                    let config =
                        watcher::Config::default().fields(&format!("metadata.name={name}"));
                    let (store, task) = reflect(api, config, (), ctx);
                    watches.clusters = Some(store);
                    watches.tasks.push(task);
                }
                Source::ClusterPlans(namespace) => {
                    let api = Api::<ClusterPlan>::namespaced(client.clone(), &namespace);
                    let (store, task) = reflect(api, watcher::Config::default(), (), ctx);
                    watches.plans = Some(store);
                    watches.tasks.push(task);
                }
                Source::Node(name) => {
                    let config =
                        watcher::Config::default().fields(&format!("metadata.name={name}"));
                    let (store, task) = reflect(Api::all(client.clone()), config, (), ctx);
                    watches.nodes = Some(store);
                    watches.tasks.push(task);
                }
            }
        }
        watches
    }

    /// Waits until every store has its first LIST; false when the
    /// credential was refused first.
    async fn ready(&mut self) -> bool {
        let all = async {
            let _ = futures::join!(
                wait(&self.halt),
                wait(&self.sets),
                wait(&self.nodes),
                wait(&self.pools),
                wait(&self.objects),
                wait(&self.clusters),
                wait(&self.plans),
            );
        };
        let mut refused = self.refused.clone();
        let was_refused = tokio::select! {
            () = all => false,
            () = refused.wait_for(|r| *r).map(|_| ()) => true,
        };
        !was_refused && !*self.refused.borrow()
    }

    fn snapshot(&self) -> Snapshot {
        fn items<K>(store: &Option<Store<K>>) -> Vec<Arc<K>>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + Hash + Clone,
        {
            store.as_ref().map(Store::state).unwrap_or_default()
        }
        Snapshot {
            halt: self
                .halt
                .as_ref()
                .and_then(|s| s.state().first().map(|cm| Halt::from_configmap(cm))),
            sets: items(&self.sets),
            nodes: items(&self.nodes),
            pools: items(&self.pools),
            objects: items(&self.objects),
            clusters: items(&self.clusters),
            plans: items(&self.plans),
            agent: self.agent.lock().expect("agent view lock").clone(),
        }
    }

    /// Reads the node's agent now and every [`nodes::POLL`], keeping what
    /// it said and ringing `changed` when that changed.
    fn poll_agent(&mut self, agents: Agents) {
        let (Some(nodes), agent, changed) =
            (self.nodes.clone(), self.agent.clone(), self.changed.clone())
        else {
            return;
        };
        self.tasks.push(tokio::spawn(async move {
            loop {
                let node = nodes.state().first().cloned();
                let read = match node {
                    Some(node) => agents.read(&node).await,
                    None => AgentView::Unavailable("no such node".to_owned()),
                };
                let fresh = {
                    let mut last = agent.lock().expect("agent view lock");
                    let fresh = last.as_ref() != Some(&read);
                    *last = Some(read);
                    fresh
                };
                if fresh {
                    changed.notify_one();
                }
                tokio::time::sleep(nodes::POLL).await;
            }
        }));
    }
}

async fn wait<K>(store: &Option<Store<K>>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    if let Some(store) = store {
        let _ = store.wait_until_ready().await;
    }
}

/// A reflector over `api` as the client's user, in a task: rings `changed`
/// after every event, and sets `refused` when the API server answers 401.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    (changed, refused): (Arc<Notify>, Arc<watch::Sender<bool>>),
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff().reflect(writer));
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(err) if refused_by(&err) => {
                    let _ = refused.send(true);
                    return;
                }
                Err(err) => tracing::debug!(error = %err, "dashboard watch failed; retrying"),
            }
        }
    });
    (store, task)
}

fn refused_by(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchFailed(e) => {
            super::auth::unauthenticated(e)
        }
        watcher::Error::WatchError(status) => status.code == 401,
        _ => false,
    }
}

async fn run(
    dashboard: Dashboard,
    client: Client,
    view: View,
    mut tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let allowed = Allowed::check(&client, &view, dashboard.namespace()).await;
    let mut watches = Watches::start(&client, &view, dashboard.namespace(), dashboard.selector());
    if !watches.ready().await {
        let _ = tx.send(Ok(login_event())).await;
        return;
    }
    if matches!(view, View::Node { .. }) && allowed.logs {
        // The first read before the first update: the page shows services.
        watches.poll_agent(dashboard.agents().clone());
        tokio::time::timeout(nodes::TIMEOUT * 2, watches.changed.notified())
            .await
            .ok();
    }
    let mut sent = views::render(&view, &watches.snapshot(), &allowed);
    if tx
        .send(Ok(update(full(&sent, containers(&view)))))
        .await
        .is_err()
    {
        return;
    }
    let changed = watches.changed.clone();
    let mut refused = watches.refused.clone();
    loop {
        tokio::select! {
            () = changed.notified() => {}
            () = refused.wait_for(|r| *r).map(|_| ()) => {
                let _ = tx.send(Ok(login_event())).await;
                return;
            }
            () = closed(&mut tx) => return,
        }
        tokio::time::sleep(DEBOUNCE).await;
        let next = views::render(&view, &watches.snapshot(), &allowed);
        let message = changes(&sent, &next);
        sent = next;
        if !message.is_empty() && tx.send(Ok(update(message))).await.is_err() {
            return;
        }
    }
}

/// Resolves when the page went away.
async fn closed(tx: &mut mpsc::Sender<Result<Event, Infallible>>) {
    futures::future::poll_fn(|cx| match tx.poll_ready(cx) {
        std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(()),
        _ => std::task::Poll::Pending,
    })
    .await
}

fn update(html: String) -> Event {
    Event::default().event("update").data(html)
}

/// `html` with `hx-swap-oob="how"` on its first element, in a template of
/// its own: the HTML parser decides what a template may hold by its first
/// element, so a row after a panel in one template would be dropped.
fn oob(html: &str, how: &str) -> String {
    template(&with_oob(html, how))
}

fn template(html: &str) -> String {
    format!("<template>{html}</template>")
}

fn with_oob(html: &str, how: &str) -> String {
    let start = html.find('<').unwrap_or(0);
    let name_end = html[start..]
        .find(|c: char| c.is_whitespace() || c == '>')
        .map(|i| start + i)
        .unwrap_or(html.len());
    format!(
        "{} hx-swap-oob=\"{how}\"{}",
        &html[..name_end],
        &html[name_end..]
    )
}

/// Every panel, and every table body with all its rows: the first update.
pub fn full(rendered: &Rendered, containers: &[&str]) -> String {
    let mut out = String::new();
    for fragment in rendered.0.iter().filter(|f| f.parent.is_none()) {
        out.push_str(&oob(&fragment.html, "true"));
    }
    for container in containers {
        out.push_str(&template(&format!(
            "<tbody id=\"{container}\" hx-swap-oob=\"innerHTML\">{}</tbody>",
            rendered.rows(container)
        )));
    }
    out
}

/// What changed from `before` to `after`: changed fragments replace
/// themselves, new rows are appended to their table body, gone rows are
/// deleted. Empty when nothing changed.
pub fn changes(before: &Rendered, after: &Rendered) -> String {
    let old: BTreeMap<&str, &Fragment> = before.0.iter().map(|f| (f.id.as_str(), f)).collect();
    let new_ids: BTreeSet<&str> = after.0.iter().map(|f| f.id.as_str()).collect();
    let mut out = String::new();
    let mut appended: BTreeMap<&str, String> = BTreeMap::new();
    for fragment in &after.0 {
        match (old.get(fragment.id.as_str()), fragment.parent.as_deref()) {
            (Some(was), _) if was.html == fragment.html => {}
            (Some(_), _) | (None, None) => out.push_str(&oob(&fragment.html, "true")),
            (None, Some(parent)) => appended.entry(parent).or_default().push_str(&fragment.html),
        }
    }
    for (parent, rows) in appended {
        out.push_str(&template(&format!(
            "<tbody hx-swap-oob=\"beforeend:#{parent}\">{rows}</tbody>"
        )));
    }
    for gone in before.0.iter().filter(|f| !new_ids.contains(f.id.as_str())) {
        out.push_str(&template(&format!(
            "<tr id=\"{}\" hx-swap-oob=\"delete\"></tr>",
            gone.id
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(id: &str, parent: Option<&str>, html: &str) -> Fragment {
        Fragment {
            id: id.into(),
            parent: parent.map(str::to_owned),
            html: html.into(),
        }
    }

    #[test]
    fn only_what_changed_is_sent() {
        let before = Rendered(vec![
            frag("banner", None, r#"<div id="banner">running</div>"#),
            frag("set-a", Some("sets"), r#"<tr id="set-a"><td>1/4</td></tr>"#),
            frag("set-b", Some("sets"), r#"<tr id="set-b"><td>0/4</td></tr>"#),
        ]);
        assert_eq!(
            changes(&before, &before),
            "",
            "nothing changed, nothing sent"
        );
        let after = Rendered(vec![
            frag("banner", None, r#"<div id="banner">running</div>"#),
            frag("set-a", Some("sets"), r#"<tr id="set-a"><td>2/4</td></tr>"#),
            frag("set-c", Some("sets"), r#"<tr id="set-c"><td>0/1</td></tr>"#),
        ]);
        assert_eq!(
            changes(&before, &after),
            concat!(
                r#"<template><tr hx-swap-oob="true" id="set-a"><td>2/4</td></tr></template>"#,
                r#"<template><tbody hx-swap-oob="beforeend:#sets"><tr id="set-c"><td>0/1</td></tr></tbody></template>"#,
                r#"<template><tr id="set-b" hx-swap-oob="delete"></tr></template>"#,
            )
        );
    }

    #[test]
    fn the_first_update_carries_every_panel_and_table_whole() {
        let rendered = Rendered(vec![
            frag("banner", None, "<div id=\"banner\">halted</div>"),
            frag("set-a", Some("sets"), "<tr id=\"set-a\"></tr>"),
        ]);
        assert_eq!(
            full(&rendered, &["sets", "pools"]),
            concat!(
                r#"<template><div hx-swap-oob="true" id="banner">halted</div></template>"#,
                r#"<template><tbody id="sets" hx-swap-oob="innerHTML"><tr id="set-a"></tr></tbody></template>"#,
                r#"<template><tbody id="pools" hx-swap-oob="innerHTML"></tbody></template>"#,
            )
        );
    }

    #[test]
    fn the_query_names_a_view() {
        let q = |s: &str| serde_urlencoded_query(s).view();
        assert_eq!(q("view=fleet"), Some(View::Fleet));
        assert_eq!(
            q("view=packageset&name=web&page=2"),
            Some(View::PackageSet {
                name: "web".into(),
                page: 2,
                phase: None
            })
        );
        assert_eq!(q("view=packageset"), None, "a set needs its name");
        assert_eq!(
            q("view=kind&plural=nodepools"),
            Some(View::Kind {
                plural: "nodepools".into()
            })
        );
        assert_eq!(q("view=kind&plural=secrets"), None, "only Theseus kinds");
        assert_eq!(q("view=other"), None);
    }

    fn serde_urlencoded_query(s: &str) -> LiveQuery {
        let uri: axum::http::Uri = format!("/ui/live?{s}").parse().unwrap();
        Query::<LiveQuery>::try_from_uri(&uri).unwrap().0
    }
}
