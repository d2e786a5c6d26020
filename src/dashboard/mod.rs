//! The dashboard: server-rendered pages under `/ui/`, served by every
//! operator replica on its HTTP port and by `theseus dashboard` on a laptop.
//!
//! Every page is read from the API server as the signed-in user, and every
//! button is a change made as that user, so Kubernetes RBAC is the only
//! authorization: buttons the user may not use are not shown
//! (SelfSubjectAccessReview) and the API server refuses them anyway.
//! Pages stay live through one Server-Sent Events stream each: the stream
//! starts with the current state (a reconnect catches up), then sends only
//! the rendered rows that changed, as htmx out-of-band swaps. The server
//! watches as the user; the browser never sees a watch event.
//!
//! Modules: [`auth`] (sessions, CSRF, access reviews), [`columns`] (CRD
//! printer columns as the default columns), [`forms`] (create and edit
//! forms generated from the CRD schemas), [`views`] (what each page
//! shows, rendered the same way for the page and for its stream),
//! [`live`] (the streams), [`pages`] (the handlers).

pub mod auth;
mod clusters;
pub mod columns;
pub mod forms;
pub mod live;
pub mod nodes;
mod pages;
pub mod views;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};

pub use auth::Mode;

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    auth: auth::Auth,
    /// The namespace of the halt ConfigMap (the operator's namespace).
    namespace: String,
    /// Only objects whose labels match this selector are shown (the
    /// operator's `--selector`).
    selector: Option<String>,
    /// The discovery etcd, when there is one.
    discovery: Option<crate::discovery::EtcdConfig>,
    /// Its tree, connected on first use and kept.
    tree: tokio::sync::OnceCell<crate::discovery::Tree>,
    /// Reads nodes' agents (a node's services and logs).
    agents: nodes::Agents,
}

impl Dashboard {
    /// A dashboard that authenticates as `mode` says, shows the halt of
    /// `namespace` and the objects matching `selector`.
    pub fn new(
        mode: Mode,
        namespace: &str,
        selector: Option<String>,
        discovery: Option<crate::discovery::EtcdConfig>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                auth: auth::Auth::new(mode),
                namespace: namespace.to_owned(),
                selector,
                discovery,
                tree: tokio::sync::OnceCell::new(),
                agents: nodes::Agents::new(None),
            }),
        }
    }

    /// The same dashboard reading nodes' agents with `token` (the agents'
    /// `--api-token`; `None` for agents on loopback without one).
    pub fn with_agent_token(mut self, token: Option<String>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("set before the dashboard is shared")
            .agents = nodes::Agents::new(token);
        self
    }

    pub(crate) fn agents(&self) -> &nodes::Agents {
        &self.inner.agents
    }

    pub(crate) fn auth(&self) -> &auth::Auth {
        &self.inner.auth
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    pub(crate) fn selector(&self) -> Option<&str> {
        self.inner.selector.as_deref()
    }

    /// The discovery tree: connected once, then shared by every request.
    pub(crate) async fn tree(&self) -> Result<crate::discovery::Tree, String> {
        let Some(config) = &self.inner.discovery else {
            return Err("this dashboard has no discovery etcd".to_owned());
        };
        self.inner
            .tree
            .get_or_try_init(|| crate::discovery::Tree::connect(config))
            .await
            .cloned()
            .map_err(|e| e.to_string())
    }
}

/// The dashboard's routes, all under `/ui/` (to be merged into a router).
pub fn router(dashboard: Dashboard) -> Router {
    Router::new()
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::permanent("/ui/") }),
        )
        .route("/ui/", get(pages::fleet))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/halt", post(pages::halt))
        .route("/ui/resume", post(pages::resume))
        .route("/ui/packagesets/{name}", get(pages::package_set))
        .route("/ui/packagesets/{name}/pause", post(pages::pause))
        .route(
            "/ui/packagesets/{name}/packages",
            post(pages::change_packages),
        )
        .route("/ui/nodepools/{name}", get(pages::node_pool))
        .route("/ui/nodepools/{name}/scale", post(pages::scale))
        .route("/ui/clusters/new", get(clusters::new_form))
        .route("/ui/clusters/preview", post(clusters::preview))
        .route("/ui/clusters/fields", get(clusters::fields))
        .route("/ui/clusters", post(clusters::create))
        .route("/ui/clusters/{namespace}/{name}", get(clusters::show))
        .route(
            "/ui/clusters/{namespace}/{name}/pause",
            post(clusters::pause),
        )
        .route(
            "/ui/clusters/{namespace}/{name}/rollback",
            post(clusters::rollback),
        )
        .route(
            "/ui/clusters/{namespace}/{name}/approve",
            post(clusters::approve),
        )
        .route(
            "/ui/edit/{plural}",
            get(forms::edit_form).post(forms::apply),
        )
        .route("/ui/services", get(pages::services))
        .route("/ui/nodes/{name}", get(pages::node))
        .route("/ui/kinds/{plural}", get(pages::kind_list))
        .route("/ui/kinds/{plural}/{name}", get(pages::object))
        .route(
            "/ui/kinds/{plural}/{namespace}/{name}",
            get(pages::namespaced_object),
        )
        .route("/ui/live", get(live::stream))
        .route("/ui/assets/{file}", get(asset))
        .with_state(dashboard)
}

/// The vendored htmx (2.0.11) and its SSE extension (2.2.4), both BSD
/// zero-clause, and the dashboard's stylesheet: compiled into the binary,
/// so nothing is fetched at build or run time.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> axum::response::Response {
    let (kind, body): (&str, &'static str) = match file.as_str() {
        "htmx.min.js" => (
            "text/javascript",
            include_str!("../../assets/dashboard/htmx.min.js"),
        ),
        "sse.js" => (
            "text/javascript",
            include_str!("../../assets/dashboard/sse.js"),
        ),
        "theseus.css" => (
            "text/css",
            include_str!("../../assets/dashboard/theseus.css"),
        ),
        "theseus.js" => (
            "text/javascript",
            include_str!("../../assets/dashboard/theseus.js"),
        ),
        _ => return axum::http::StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
