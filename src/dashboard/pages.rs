//! The dashboard's handlers: pages (GET) and buttons (POST). A page reads
//! as the user and renders the same fragments its live stream sends; a
//! button checks the CSRF token, then makes its change as the user and
//! answers a short fragment (what happened, or why the API server refused).

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use k8s_openapi::api::core::v1::Event as KubeEvent;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;

use super::Dashboard;
use super::auth::{self, Rejection, Session};
use super::columns;
use super::views::{self, Allowed, Rendered, View};
use crate::api::{NodePool, PackageSet, ServiceGroup};
use crate::shared::halt::HaltStore;

/// What every page's frame needs.
pub struct Chrome {
    pub csrf: String,
    pub can_sign_out: bool,
    /// The live stream's query, or empty for a page without one.
    pub live: String,
    /// Every kind: plural and kind.
    pub kinds: Vec<(String, String)>,
}

impl Chrome {
    pub(super) fn new(session: &Session, view: Option<&View>) -> Self {
        Self {
            csrf: session.csrf.clone(),
            can_sign_out: session.signed_in_by_cookie,
            live: view.map(View::live_query).unwrap_or_default(),
            kinds: columns::kinds()
                .iter()
                .map(|k| (k.plural.clone(), k.kind.clone()))
                .collect(),
        }
    }
}

pub(super) fn page(template: impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the page: {err}\n"),
        )
            .into_response(),
    }
}

#[derive(Template)]
#[template(path = "dashboard/error.html")]
struct ErrorPage {
    chrome: Chrome,
    heading: String,
    message: String,
}

/// A page for an API error: the login page when the credential is no
/// longer accepted, otherwise what the API server said.
pub(super) fn api_error(session: &Session, what: &str, err: &kube::Error) -> Response {
    if auth::unauthenticated(err) {
        return auth::login_redirect(true, false);
    }
    let (status, message) = match err {
        kube::Error::Api(s) if s.code == 403 => (
            StatusCode::FORBIDDEN,
            format!("You may not read {what}: {}", s.message),
        ),
        kube::Error::Api(s) if s.code == 404 => {
            (StatusCode::NOT_FOUND, format!("No {what}: {}", s.message))
        }
        other => (
            StatusCode::BAD_GATEWAY,
            format!("Cannot read {what} from the API server: {other}"),
        ),
    };
    let mut response = page(ErrorPage {
        chrome: Chrome::new(session, None),
        heading: "Cannot show this page".into(),
        message,
    });
    *response.status_mut() = status;
    response
}

/// Reads `view` as the session's user and what they may do on it.
pub(super) async fn load(
    dashboard: &Dashboard,
    session: &Session,
    view: &View,
) -> Result<Loaded, kube::Error> {
    let (snapshot, allowed) = futures::join!(
        views::load(
            &session.client,
            view,
            dashboard.namespace(),
            dashboard.selector()
        ),
        Allowed::check(&session.client, view, dashboard.namespace())
    );
    let mut snapshot = snapshot?;
    if let (View::Node { .. }, true, Some(node)) = (view, allowed.logs, snapshot.nodes.first()) {
        snapshot.agent = Some(dashboard.agents().read(node).await);
    }
    Ok(Loaded {
        rendered: views::render(view, &snapshot, &allowed),
        snapshot,
        allowed,
    })
}

/// A page's fragments, and what they were rendered from: a page's forms
/// are rendered once, outside the fragments its live stream replaces, so
/// that an update never takes what the user is typing.
pub(super) struct Loaded {
    pub rendered: Rendered,
    pub snapshot: views::Snapshot,
    pub allowed: Allowed,
}

#[derive(Template)]
#[template(path = "dashboard/fleet.html")]
struct FleetPage {
    chrome: Chrome,
    banner: String,
    sets: String,
    pools: String,
}

/// `GET /ui/`: the halt, every PackageSet's progress, every NodePool.
pub async fn fleet(State(dashboard): State<Dashboard>, session: Session) -> Response {
    let view = View::Fleet;
    match load(&dashboard, &session, &view).await {
        Ok(Loaded { rendered, .. }) => page(FleetPage {
            chrome: Chrome::new(&session, Some(&view)),
            banner: rendered.panel("halt-banner"),
            sets: rendered.rows("sets"),
            pools: rendered.rows("pools"),
        }),
        Err(err) => api_error(&session, "the fleet", &err),
    }
}

/// The query of a PackageSet's page.
#[derive(Debug, Default, Deserialize)]
pub struct SetQuery {
    page: Option<usize>,
    phase: Option<String>,
}

#[derive(Template)]
#[template(path = "dashboard/package_set.html")]
struct SetPage {
    chrome: Chrome,
    /// Whether the user may change the set (the change form is shown).
    can_change: bool,
    /// The set's packages when the page was rendered, one per line.
    packages_text: String,
    name: String,
    banner: String,
    summary: String,
    pager: String,
    nodes: String,
    /// When, type, reason, message.
    events: Vec<(String, String, String, String)>,
}

/// `GET /ui/packagesets/NAME`: the set, its nodes (paged), its events.
pub async fn package_set(
    State(dashboard): State<Dashboard>,
    session: Session,
    Path(name): Path<String>,
    Query(query): Query<SetQuery>,
) -> Response {
    let view = View::PackageSet {
        name: name.clone(),
        page: query.page.unwrap_or(0),
        phase: query.phase.filter(|p| !p.is_empty()),
    };
    let (rendered, events) = futures::join!(
        load(&dashboard, &session, &view),
        events(&session.client, "PackageSet", &name)
    );
    match rendered {
        Ok(Loaded {
            rendered,
            snapshot,
            allowed,
        }) => page(SetPage {
            can_change: allowed.pause,
            packages_text: snapshot
                .sets
                .iter()
                .find(|s| s.name_any() == name)
                .map(|s| s.spec.packages.join("\n"))
                .unwrap_or_default(),
            chrome: Chrome::new(&session, Some(&view)),
            banner: rendered.panel("halt-banner"),
            summary: rendered.panel("set-summary"),
            pager: rendered.panel("node-pager"),
            nodes: rendered.rows("nodes"),
            events,
            name,
        }),
        Err(err) => api_error(&session, &format!("PackageSet {name}"), &err),
    }
}

/// The last events of an object, newest first; none when the user may not
/// read events.
async fn events(client: &Client, kind: &str, name: &str) -> Vec<(String, String, String, String)> {
    let params = ListParams::default().fields(&format!(
        "involvedObject.kind={kind},involvedObject.name={name}"
    ));
    let mut events = Api::<KubeEvent>::all(client.clone())
        .list(&params)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let when = |e: &KubeEvent| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    events.sort_by_key(|e| std::cmp::Reverse(when(e)));
    events
        .iter()
        .take(30)
        .map(|e| {
            (
                when(e).map(|t| t.to_string()).unwrap_or_default(),
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[derive(Template)]
#[template(path = "dashboard/node_pool.html")]
struct PoolPage {
    chrome: Chrome,
    /// Whether the user may scale the pool (the scale form is shown).
    can_scale: bool,
    /// The pool's replicas when the page was rendered.
    replicas: i32,
    name: String,
    summary: String,
    instances: String,
}

/// `GET /ui/nodepools/NAME`: the pool, its instances and its scale form.
pub async fn node_pool(
    State(dashboard): State<Dashboard>,
    session: Session,
    Path(name): Path<String>,
) -> Response {
    let view = View::NodePool { name: name.clone() };
    match load(&dashboard, &session, &view).await {
        Ok(Loaded {
            rendered,
            snapshot,
            allowed,
        }) => page(PoolPage {
            can_scale: allowed.scale,
            replicas: snapshot
                .pools
                .iter()
                .find(|p| p.name_any() == name)
                .map(|p| p.spec.replicas)
                .unwrap_or_default(),
            chrome: Chrome::new(&session, Some(&view)),
            summary: rendered.panel("pool-summary"),
            instances: rendered.rows("instances"),
            name,
        }),
        Err(err) => api_error(&session, &format!("NodePool {name}"), &err),
    }
}

#[derive(Template)]
#[template(path = "dashboard/kind_list.html")]
struct KindPage {
    chrome: Chrome,
    can_create: bool,
    plural: String,
    kind: String,
    namespaced: bool,
    columns: Vec<String>,
    rows: String,
}

/// `GET /ui/kinds/PLURAL`: every object of a kind in its printer columns.
pub async fn kind_list(
    State(dashboard): State<Dashboard>,
    session: Session,
    Path(plural): Path<String>,
) -> Response {
    let Some(kind) = columns::by_plural(&plural) else {
        return not_found(&session, &format!("There is no Theseus kind {plural}."));
    };
    let view = View::Kind {
        plural: plural.clone(),
    };
    let create = auth::Access {
        verb: "create",
        group: "theseus.dev",
        resource: &kind.plural,
        namespace: None,
        name: None,
    };
    let (loaded, can_create) = futures::join!(
        load(&dashboard, &session, &view),
        auth::can(&session.client, &create)
    );
    match loaded {
        Ok(Loaded { rendered, .. }) => page(KindPage {
            chrome: Chrome::new(&session, Some(&view)),
            can_create,
            plural,
            kind: kind.kind.clone(),
            namespaced: kind.namespaced,
            columns: kind.columns.iter().map(|c| c.name.clone()).collect(),
            rows: rendered.rows("objects"),
        }),
        Err(err) => api_error(&session, &kind.plural, &err),
    }
}

pub(super) fn not_found(session: &Session, message: &str) -> Response {
    let mut response = page(ErrorPage {
        chrome: Chrome::new(session, None),
        heading: "Not found".into(),
        message: message.to_owned(),
    });
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

#[derive(Template)]
#[template(path = "dashboard/object.html")]
struct ObjectPage {
    chrome: Chrome,
    /// The edit form's address, when the user may change the object.
    edit: String,
    kind: String,
    name: String,
    yaml: String,
    /// `status.phase`, if the object has one.
    phase: String,
    /// `status.conditions` as badges.
    badges: Vec<views::Badge>,
    /// A tenant's quotas.
    usage: Vec<QuotaLine>,
}

/// A tenant's quota on its page: quota, used, limit, percent used (empty
/// without a limit), and whether it is at or over its limit.
pub(super) type QuotaLine = (String, String, String, String, bool);

/// What an object's page shows above its YAML: its phase, its conditions
/// and, for a Tenant, its usage against each quota.
pub(super) fn object_summary(
    kind: &str,
    object: &DynamicObject,
) -> (String, Vec<views::Badge>, Vec<QuotaLine>) {
    let status = object.data.get("status");
    let phase = status
        .and_then(|s| s.get("phase"))
        .and_then(|p| p.as_str())
        .unwrap_or_default()
        .to_owned();
    let conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> = status
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let usage = match (
        kind,
        serde_json::to_value(object).map(serde_json::from_value),
    ) {
        ("Tenant", Ok(Ok(tenant))) => {
            let tenant: crate::api::Tenant = tenant;
            let used = tenant.status.unwrap_or_default().usage;
            crate::quota::usage_rows(&tenant.spec.quotas, &used)
                .into_iter()
                .map(|r| {
                    let percent = r
                        .fraction
                        .map(|f| format!("{:.0}", (f * 100.0).min(100.0)))
                        .unwrap_or_default();
                    let over = r.fraction.is_some_and(|f| f >= 1.0);
                    (r.quota, r.used, r.limit, percent, over)
                })
                .collect()
        }
        _ => Vec::new(),
    };
    (phase, views::badges(&conditions), usage)
}

/// `GET /ui/kinds/PLURAL/NAME`: a cluster-scoped object as YAML.
pub async fn object(
    State(_dashboard): State<Dashboard>,
    session: Session,
    Path((plural, name)): Path<(String, String)>,
) -> Response {
    show_object(&session, &plural, None, &name).await
}

/// `GET /ui/kinds/PLURAL/NAMESPACE/NAME`: a namespaced object as YAML.
pub async fn namespaced_object(
    State(_dashboard): State<Dashboard>,
    session: Session,
    Path((plural, namespace, name)): Path<(String, String, String)>,
) -> Response {
    show_object(&session, &plural, Some(&namespace), &name).await
}

async fn show_object(
    session: &Session,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
) -> Response {
    let Some(kind) = columns::by_plural(plural) else {
        return not_found(session, &format!("There is no Theseus kind {plural}."));
    };
    let api = match namespace {
        Some(ns) => {
            Api::<DynamicObject>::namespaced_with(session.client.clone(), ns, &kind.resource)
        }
        None => Api::<DynamicObject>::all_with(session.client.clone(), &kind.resource),
    };
    let patch = auth::Access {
        verb: "patch",
        group: "theseus.dev",
        resource: &kind.plural,
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
    };
    let (got, can_patch) = futures::join!(api.get(name), auth::can(&session.client, &patch));
    match got {
        Ok(mut object) => {
            object.metadata.managed_fields = None;
            let edit = match (can_patch, namespace) {
                (false, _) => String::new(),
                (true, Some(ns)) => format!("/ui/edit/{plural}?namespace={ns}&name={name}"),
                (true, None) => format!("/ui/edit/{plural}?name={name}"),
            };
            let (phase, badges, usage) = object_summary(&kind.kind, &object);
            page(ObjectPage {
                chrome: Chrome::new(session, None),
                phase,
                badges,
                usage,
                edit,
                kind: kind.kind.clone(),
                name: name.to_owned(),
                yaml: serde_yaml::to_string(&object).unwrap_or_default(),
            })
        }
        Err(err) => api_error(session, &format!("{} {name}", kind.kind), &err),
    }
}

/// One ServiceGroup on the services page.
pub struct GroupView {
    pub namespace: String,
    pub name: String,
    pub service: String,
    pub labels: String,
    pub ready: String,
    pub shown: bool,
    pub hidden_why: String,
    pub containers: Vec<String>,
}

#[derive(Template)]
#[template(path = "dashboard/services.html")]
struct ServicesPage {
    chrome: Chrome,
    labels: String,
    note: String,
    groups: Vec<GroupView>,
}

/// The query of the services page.
#[derive(Debug, Default, Deserialize)]
pub struct ServicesQuery {
    labels: Option<String>,
}

/// `GET /ui/services`: the ServiceGroups the user may read, filtered by
/// labels, each with its containers from the discovery tree, shown only
/// where the user may `get` that namespace's ServiceGroups.
pub async fn services(
    State(dashboard): State<Dashboard>,
    session: Session,
    Query(query): Query<ServicesQuery>,
) -> Response {
    let wanted: BTreeSet<String> = query
        .labels
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let params = match dashboard.selector() {
        Some(s) => ListParams::default().labels(s),
        None => ListParams::default(),
    };
    let groups = match Api::<ServiceGroup>::all(session.client.clone())
        .list(&params)
        .await
    {
        Ok(list) => list.items,
        Err(err) => return api_error(&session, "ServiceGroups", &err),
    };
    let groups: Vec<ServiceGroup> = groups
        .into_iter()
        .filter(|g| wanted.iter().all(|l| g.spec.labels.contains(l)))
        .collect();
    let mut allowed: BTreeMap<String, bool> = BTreeMap::new();
    for namespace in groups.iter().filter_map(|g| g.namespace()) {
        if let std::collections::btree_map::Entry::Vacant(entry) = allowed.entry(namespace) {
            let access = auth::Access {
                verb: "get",
                group: "theseus.dev",
                resource: "servicegroups",
                namespace: Some(entry.key().clone()),
                name: None,
            };
            entry.insert(auth::can(&session.client, &access).await);
        }
    }
    let tree = dashboard.tree().await;
    let mut out = Vec::new();
    for group in &groups {
        let namespace = group.namespace().unwrap_or_default();
        let status = group.status.clone().unwrap_or_default();
        let mut view = GroupView {
            name: group.name_any(),
            service: group.spec.service.clone(),
            labels: group.spec.labels.join(","),
            ready: format!("{}/{}", status.ready_replicas, group.spec.replicas),
            shown: false,
            hidden_why: String::new(),
            containers: Vec::new(),
            namespace: namespace.clone(),
        };
        match (&tree, allowed.get(&namespace).copied().unwrap_or(false)) {
            (_, false) => view.hidden_why = format!("you may not get ServiceGroups in {namespace}"),
            (Err(why), true) => view.hidden_why = why.clone(),
            (Ok(tree), true) => match tree.service_containers(&group.spec.service).await {
                Ok(entries) => {
                    view.shown = true;
                    view.containers = entries
                        .into_iter()
                        .filter(|e| status.group.as_deref() == Some(e.group.as_str()))
                        .map(|e| {
                            let port = e
                                .info
                                .instance_port
                                .map(|p| format!(":{p}"))
                                .unwrap_or_default();
                            let node = e
                                .info
                                .node_name
                                .map(|n| format!(" on {n}"))
                                .unwrap_or_default();
                            format!("{} {}{port}{node}", e.container, e.info.instance_host)
                        })
                        .collect();
                }
                Err(err) => view.hidden_why = format!("cannot read the discovery tree: {err}"),
            },
        }
        out.push(view);
    }
    page(ServicesPage {
        chrome: Chrome::new(&session, None),
        labels: wanted.into_iter().collect::<Vec<_>>().join(","),
        note: if groups.is_empty() {
            "No ServiceGroups match.".into()
        } else {
            String::new()
        },
        groups: out,
    })
}

#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage {
    expired: bool,
    error: String,
}

/// The query of the login page.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    expired: Option<String>,
}

/// `GET /ui/login`.
pub async fn login_form(
    State(dashboard): State<Dashboard>,
    Query(query): Query<LoginQuery>,
) -> Response {
    if !dashboard.auth().uses_login() {
        return Redirect::to("/ui/").into_response();
    }
    page(LoginPage {
        expired: query.expired.is_some(),
        error: String::new(),
    })
}

/// `POST /ui/login`: checks the pasted token with the API server
/// (SelfSubjectReview) and keeps it in the cookie.
pub async fn login(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form(&body);
    let refuse = |status: StatusCode, error: String| {
        let mut response = page(LoginPage {
            expired: false,
            error,
        });
        *response.status_mut() = status;
        response
    };
    if let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) {
        let host = headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if origin.split_once("://").map(|(_, h)| h) != Some(host) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("Cross-site sign-in refused (Origin {origin})."),
            );
        }
    }
    let token = form
        .get("token")
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    if token.is_empty() || token.contains([';', ' ', '\n', '\r', ',']) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Paste a bearer token (one line, no spaces).".into(),
        );
    }
    let client = match dashboard.auth().client_with_token(&token) {
        Ok(client) => client,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    match auth::whoami(&client).await {
        Ok(_user) => {
            let mut response = Redirect::to("/ui/").into_response();
            if let Ok(cookie) = auth::token_cookie(&token).parse() {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(err) if auth::unauthenticated(&err) => refuse(
            StatusCode::UNAUTHORIZED,
            "The API server does not accept this token (expired, revoked or mistyped).".into(),
        ),
        Err(err) => refuse(
            StatusCode::BAD_GATEWAY,
            format!("Cannot check the token with the API server: {err}"),
        ),
    }
}

/// `POST /ui/logout`: forgets the cookie.
pub async fn logout() -> Response {
    auth::login_redirect(false, false)
}

/// A urlencoded form body as a map (the last value of a repeated field).
pub fn form(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// An answer to a button: a fragment for `#flash` (or the form's result).
pub(super) fn answer(status: StatusCode, class: &str, text: &str) -> Response {
    let html = format!(
        "<span class=\"{class}\">{}</span>",
        askama::filters::escape(text, askama::filters::Html)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    (status, Html(html)).into_response()
}

/// A button's request, checked: its session (a login redirect when there
/// is none), its form's fields, and its CSRF token and `Origin`
/// ([`auth::check_post`]); a request that may not proceed is answered with
/// its refusal before the handler runs. The headers stay for the answer.
pub struct Button {
    /// The user's session.
    pub session: Session,
    /// The form's fields.
    pub fields: BTreeMap<String, String>,
    /// The request's headers.
    pub headers: HeaderMap,
}

impl axum::extract::FromRequest<Dashboard> for Button {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        dashboard: &Dashboard,
    ) -> Result<Self, Response> {
        let headers = request.headers().clone();
        let session = match dashboard.auth().session(&headers) {
            Ok(session) => session,
            Err(Rejection::Login { expired, .. }) => {
                return Err(auth::login_redirect(
                    expired,
                    headers.contains_key("hx-request"),
                ));
            }
            Err(other) => return Err(other.into_response()),
        };
        let body = Bytes::from_request(request, dashboard)
            .await
            .map_err(IntoResponse::into_response)?;
        let fields = form(&body);
        if let Err(why) =
            auth::check_post(&session, &headers, fields.get("csrf").map(String::as_str))
        {
            return Err(answer(StatusCode::FORBIDDEN, "refused", &why));
        }
        Ok(Button {
            session,
            fields,
            headers,
        })
    }
}

/// The answer to a change the API server refused or failed.
pub(super) fn refused(headers: &HeaderMap, what: &str, err: &kube::Error) -> Response {
    if auth::unauthenticated(err) {
        return auth::login_redirect(true, headers.contains_key("hx-request"));
    }
    match err {
        kube::Error::Api(s) => answer(
            StatusCode::from_u16(s.code).unwrap_or(StatusCode::BAD_GATEWAY),
            "refused",
            &format!("Cannot {what}: {}", s.message),
        ),
        other => answer(
            StatusCode::BAD_GATEWAY,
            "refused",
            &format!("Cannot {what}: {other}"),
        ),
    }
}

/// A button's change: a merge patch of `name` as the user; answers `done`
/// or the API server's refusal of `what`.
pub(super) async fn merge_patch<K>(
    api: Api<K>,
    name: &str,
    patch: serde_json::Value,
    headers: &HeaderMap,
    done: &str,
    what: &str,
) -> Response
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => answer(StatusCode::OK, "ok", done),
        Err(err) => refused(headers, what, &err),
    }
}

/// `POST /ui/halt` (`reason`): halts every rollout, as the user.
pub async fn halt(
    State(dashboard): State<Dashboard>,
    Button {
        session,
        fields,
        headers,
    }: Button,
) -> Response {
    let reason = fields
        .get("reason")
        .map(|r| r.trim().to_owned())
        .unwrap_or_default();
    if reason.is_empty() {
        return answer(
            StatusCode::BAD_REQUEST,
            "refused",
            "A halt needs a reason: it is shown on every PackageSet.",
        );
    }
    let by = match auth::whoami(&session.client).await {
        Ok(user) => user,
        Err(err) => return refused(&headers, "halt", &err),
    };
    match HaltStore::new(session.client.clone(), dashboard.namespace())
        .halt(&reason, &by, Timestamp::now())
        .await
    {
        Ok(halt) => answer(
            StatusCode::OK,
            "ok",
            &format!("Rollouts halted ({}).", halt.message()),
        ),
        Err(err) => refused(&headers, "halt", &err),
    }
}

/// `POST /ui/resume`: clears the halt, as the user.
pub async fn resume(
    State(dashboard): State<Dashboard>,
    Button {
        session, headers, ..
    }: Button,
) -> Response {
    match HaltStore::new(session.client.clone(), dashboard.namespace())
        .resume()
        .await
    {
        Ok(true) => answer(StatusCode::OK, "ok", "Rollouts resumed."),
        Ok(false) => answer(StatusCode::OK, "ok", "Rollouts were not halted."),
        Err(err) => refused(&headers, "resume", &err),
    }
}

/// `POST /ui/packagesets/NAME/pause` (`paused`: true or false).
pub async fn pause(
    Path(name): Path<String>,
    Button {
        session,
        fields,
        headers,
    }: Button,
) -> Response {
    let paused = fields.get("paused").map(String::as_str) != Some("false");
    merge_patch(
        Api::<PackageSet>::all(session.client.clone()),
        &name,
        json!({ "spec": { "paused": paused } }),
        &headers,
        &format!(
            "PackageSet {name} {}.",
            if paused { "paused" } else { "resumed" }
        ),
        &format!("pause PackageSet {name}"),
    )
    .await
}

/// `POST /ui/packagesets/NAME/packages` (`packages`, one per line): without
/// `confirm`, answers the diff and a button that confirms it; with
/// `confirm`, changes the set's packages as the user.
pub async fn change_packages(
    Path(name): Path<String>,
    Button {
        session,
        fields,
        headers,
    }: Button,
) -> Response {
    let wanted: Vec<String> = fields
        .get("packages")
        .map(|p| {
            p.split(['\n', ',', ' '])
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let api = Api::<PackageSet>::all(session.client.clone());
    if fields.contains_key("confirm") {
        let done = format!("PackageSet {name} now rolls out {}.", wanted.join(" "));
        let patch = json!({ "spec": { "packages": wanted } });
        let what = format!("change PackageSet {name}");
        return merge_patch(api, &name, patch, &headers, &done, &what).await;
    }
    let current = match api.get(&name).await {
        Ok(set) => set.spec.packages,
        Err(err) => return refused(&headers, &format!("read PackageSet {name}"), &err),
    };
    let diff = PackageDiff {
        name: name.clone(),
        removed: current
            .iter()
            .filter(|p| !wanted.contains(p))
            .cloned()
            .collect(),
        added: wanted
            .iter()
            .filter(|p| !current.contains(p))
            .cloned()
            .collect(),
        packages: wanted.join("\n"),
        csrf: session.csrf.clone(),
    };
    match diff.render() {
        Ok(html) => Html(html).into_response(),
        Err(err) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "refused",
            &err.to_string(),
        ),
    }
}

/// The confirmation of a package change.
#[derive(Template)]
#[template(path = "dashboard/package_diff.html")]
pub struct PackageDiff {
    pub name: String,
    pub removed: Vec<String>,
    pub added: Vec<String>,
    pub packages: String,
    pub csrf: String,
}

/// `POST /ui/nodepools/NAME/scale` (`replicas`).
pub async fn scale(
    Path(name): Path<String>,
    Button {
        session,
        fields,
        headers,
    }: Button,
) -> Response {
    let Some(replicas) = fields
        .get("replicas")
        .and_then(|r| r.trim().parse::<i32>().ok())
    else {
        return answer(
            StatusCode::BAD_REQUEST,
            "refused",
            "Replicas must be a whole number.",
        );
    };
    merge_patch(
        Api::<NodePool>::all(session.client.clone()),
        &name,
        json!({ "spec": { "replicas": replicas } }),
        &headers,
        &format!("NodePool {name} scales to {replicas}."),
        &format!("scale NodePool {name}"),
    )
    .await
}

#[derive(Template)]
#[template(path = "dashboard/node.html")]
struct NodePage {
    chrome: Chrome,
    summary: String,
    services: String,
    logs: String,
}

/// `GET /ui/nodes/NAME`.
pub async fn node(
    State(dashboard): State<Dashboard>,
    session: Session,
    Path(name): Path<String>,
) -> Response {
    let view = View::Node { name: name.clone() };
    match load(&dashboard, &session, &view).await {
        Ok(Loaded { rendered, .. }) => page(NodePage {
            chrome: Chrome::new(&session, Some(&view)),
            summary: rendered.panel("node-summary"),
            services: rendered.rows("services"),
            logs: rendered.panel("node-logs"),
        }),
        Err(err) => api_error(&session, &format!("NodeInstall {name}"), &err),
    }
}
