//! A Cluster's page and the create-a-cluster page: the layout and the
//! current plan's tasks by level, approve and pause; a form whose preview
//! solves the layout as the user types, and the create.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;

use super::Dashboard;
use super::auth::Session;
use super::pages::{Button, Chrome, Loaded, answer, api_error, load, merge_patch, page, refused};
use super::views::View;
use crate::api::{Cluster, ClusterPlan, ClusterTemplate, NodeClass, PlanPhase, ServiceDefinition};
use crate::cluster::drive::APPROVED_ANNOTATION;
use crate::layout::{Catalog, Outcome, Request};

#[derive(Template)]
#[template(path = "dashboard/cluster.html")]
struct ClusterPage {
    chrome: Chrome,
    name: String,
    summary: String,
    layout: String,
    dag: String,
    tasks: String,
}

/// `GET /ui/clusters/NAMESPACE/NAME`: the cluster, its layout and its
/// current plan's tasks by level.
pub async fn show(
    State(dashboard): State<Dashboard>,
    session: Session,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let view = View::Cluster {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    match load(&dashboard, &session, &view).await {
        Ok(Loaded { rendered, .. }) => page(ClusterPage {
            chrome: Chrome::new(&session, Some(&view)),
            summary: rendered.panel("cluster-summary"),
            layout: rendered.rows("layout"),
            dag: rendered.panel("plan-dag"),
            tasks: rendered.rows("tasks"),
            name,
        }),
        Err(err) => api_error(&session, &format!("Cluster {namespace}/{name}"), &err),
    }
}

/// `POST /ui/clusters/NAMESPACE/NAME/pause` (`paused`: true or false): a
/// paused cluster is not solved again and its plan starts no new task.
pub async fn pause(
    Path((namespace, name)): Path<(String, String)>,
    Button {
        session,
        fields,
        headers,
    }: Button,
) -> Response {
    let paused = fields.get("paused").map(String::as_str) != Some("false");
    let done = if paused {
        format!("Cluster {namespace}/{name} paused: its plan starts no new task.")
    } else {
        format!("Cluster {namespace}/{name} resumed.")
    };
    merge_patch(
        Api::<Cluster>::namespaced(session.client.clone(), &namespace),
        &name,
        json!({ "spec": { "paused": paused } }),
        &headers,
        &done,
        &format!("pause Cluster {namespace}/{name}"),
    )
    .await
}

/// The Cluster `namespace/name` and the plan its status names, read as
/// the user, with their APIs; or the answer: the API server's refusal, or
/// 409 when the cluster has no plan to `verb`.
async fn current_plan(
    session: &Session,
    headers: &HeaderMap,
    (namespace, name): (&str, &str),
    what: &str,
    verb: &str,
) -> Result<(Api<Cluster>, Cluster, Api<ClusterPlan>, ClusterPlan), Box<Response>> {
    let clusters = Api::<Cluster>::namespaced(session.client.clone(), namespace);
    let cluster = clusters
        .get(name)
        .await
        .map_err(|err| Box::new(refused(headers, what, &err)))?;
    let Some(plan_name) = cluster.status.as_ref().and_then(|s| s.plan.clone()) else {
        return Err(Box::new(answer(
            StatusCode::CONFLICT,
            "refused",
            &format!("Cluster {namespace}/{name} has no plan to {verb}."),
        )));
    };
    let plans = Api::<ClusterPlan>::namespaced(session.client.clone(), namespace);
    let plan = plans
        .get(&plan_name)
        .await
        .map_err(|err| Box::new(refused(headers, what, &err)))?;
    Ok((clusters, cluster, plans, plan))
}

/// `POST /ui/clusters/NAMESPACE/NAME/approve`: approves the plan named in
/// the cluster's status, when it awaits approval (409 otherwise, naming
/// its phase), by the annotation `theseus cluster approve` sets.
pub async fn approve(
    Path((namespace, name)): Path<(String, String)>,
    Button {
        session, headers, ..
    }: Button,
) -> Response {
    let what = format!("approve the plan of Cluster {namespace}/{name}");
    let (_, _, plans, plan) =
        match current_plan(&session, &headers, (&namespace, &name), &what, "approve").await {
            Ok(found) => found,
            Err(answer) => return *answer,
        };
    let plan_name = plan.name_any();
    let phase = plan.status.map(|s| s.phase).unwrap_or_default();
    if phase != PlanPhase::AwaitingApproval {
        return answer(
            StatusCode::CONFLICT,
            "refused",
            &format!(
                "ClusterPlan {namespace}/{plan_name} is {phase:?}, not AwaitingApproval: nothing to approve."
            ),
        );
    }
    let patch = json!({ "metadata": { "annotations": { APPROVED_ANNOTATION: "true" } } });
    let done = format!("ClusterPlan {namespace}/{plan_name} approved.");
    merge_patch(plans, &plan_name, patch, &headers, &done, &what).await
}

/// `POST /ui/clusters/NAMESPACE/NAME/rollback`: rolls back the cluster's
/// plan that stopped at a failure, putting the spec back as the plan
/// found it (`theseus cluster rollback`); 409 with the reason otherwise.
pub async fn rollback(
    Path((namespace, name)): Path<(String, String)>,
    Button {
        session, headers, ..
    }: Button,
) -> Response {
    let what = format!("roll back the plan of Cluster {namespace}/{name}");
    let (clusters, cluster, _, plan) =
        match current_plan(&session, &headers, (&namespace, &name), &what, "roll back").await {
            Ok(found) => found,
            Err(answer) => return *answer,
        };
    let plan_name = plan.name_any();
    let patch = match crate::cluster::rollback::patch(&cluster, &plan) {
        Ok(patch) => patch,
        Err(why) => return answer(StatusCode::CONFLICT, "refused", &why),
    };
    let done = format!(
        "Cluster {namespace}/{name}: spec put back as plan {plan_name} found it; its inverse tasks undo what it ran."
    );
    merge_patch(clusters, &name, patch, &headers, &done, &what).await
}

/// The sizes a template's layouts exist for, as its status says
/// (`4-20, 24`).
fn feasible_sizes(template: &ClusterTemplate) -> String {
    template
        .status
        .as_ref()
        .map(|s| s.feasible_sizes.join(", "))
        .unwrap_or_default()
}

/// A template on the create page: its name and the sizes it can have.
pub struct TemplateChoice {
    pub name: String,
    pub sizes: String,
}

#[derive(Template)]
#[template(path = "dashboard/cluster_new.html")]
struct NewPage {
    chrome: Chrome,
    namespace: String,
    templates: Vec<TemplateChoice>,
    fields: String,
}

/// The part of the create form a template decides: its size range, the
/// services it may run (its defaults checked), its node classes, and one
/// field per configuration key it declares (its default filled in); with
/// no template, free fields.
#[derive(Template, Default)]
#[template(path = "dashboard/cluster_fields.html")]
pub struct TemplateFields {
    pub template: String,
    /// Why the template's fields cannot be shown.
    pub problem: String,
    pub size: String,
    pub min: i32,
    pub max: i32,
    pub sizes: String,
    /// Service, and whether it is checked.
    pub services: Vec<(String, bool)>,
    pub classes: Vec<String>,
    pub default_class: String,
    /// Key and value.
    pub config: Vec<(String, String)>,
}

impl TemplateFields {
    /// The fields of template `name` (resolved through its parent and
    /// includes), keeping what `form` already holds.
    pub fn of(templates: &[ClusterTemplate], name: &str, form: &ClusterForm) -> Self {
        let mut fields = TemplateFields {
            template: name.to_owned(),
            size: form.size.map(|s| s.to_string()).unwrap_or_default(),
            min: 1,
            max: 10_000,
            ..Default::default()
        };
        if name.is_empty() {
            return fields;
        }
        let catalog = Catalog::of(&[], &[], templates);
        let spec = match crate::layout::resolve::resolve(&catalog, name) {
            Ok(spec) => spec,
            Err(findings) => {
                fields.problem = findings
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                return fields;
            }
        };
        fields.min = spec.constraints.size.min.unwrap_or(1);
        fields.max = spec.constraints.size.max.unwrap_or(10_000);
        fields.sizes = templates
            .iter()
            .find(|t| t.name_any() == name)
            .map(feasible_sizes)
            .unwrap_or_default();
        let chosen: Vec<&String> = if form.services.is_empty() {
            spec.defaults.services.iter().collect()
        } else {
            form.services.iter().collect()
        };
        fields.services = spec
            .compatibility
            .services
            .iter()
            .map(|s| (s.clone(), chosen.contains(&s)))
            .collect();
        fields.classes = spec.compatibility.node_classes.clone();
        fields.default_class = spec.defaults.node_class.clone().unwrap_or_default();
        fields.config = spec
            .defaults
            .config
            .iter()
            .map(|(k, v)| (k.clone(), form.config.get(k).unwrap_or(v).clone()))
            .collect();
        fields
    }
}

/// `GET /ui/clusters/fields?template=T&…`: the create form's fields for
/// template T, keeping the values the rest of the query carries.
pub async fn fields(
    State(_dashboard): State<Dashboard>,
    session: Session,
    axum::extract::Query(query): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    let form = ClusterForm::parse(&query);
    let templates = match Api::<ClusterTemplate>::all(session.client.clone())
        .list(&Default::default())
        .await
    {
        Ok(list) => list.items,
        Err(err) => return api_error(&session, "ClusterTemplates", &err),
    };
    match TemplateFields::of(&templates, &form.template, &form).render() {
        Ok(html) => axum::response::Html(html).into_response(),
        Err(err) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "refused",
            &err.to_string(),
        ),
    }
}

/// The query of the create page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct NewQuery {
    namespace: Option<String>,
}

/// `GET /ui/clusters/new`: a form for a Cluster's spec (template, size,
/// services, node class, configuration) whose preview solves the layout
/// as the user types.
pub async fn new_form(
    State(_dashboard): State<Dashboard>,
    session: Session,
    axum::extract::Query(query): axum::extract::Query<NewQuery>,
) -> Response {
    let templates = match Api::<ClusterTemplate>::all(session.client.clone())
        .list(&Default::default())
        .await
    {
        Ok(list) => list.items,
        Err(err) => return api_error(&session, "ClusterTemplates", &err),
    };
    let fields = TemplateFields::of(&templates, "", &ClusterForm::default())
        .render()
        .unwrap_or_default();
    page(NewPage {
        chrome: Chrome::new(&session, None),
        namespace: query.namespace.unwrap_or_else(|| "default".to_owned()),
        fields,
        templates: templates
            .iter()
            .filter(|t| !t.spec.partial)
            .map(|t| TemplateChoice {
                name: t.name_any(),
                sizes: feasible_sizes(t),
            })
            .collect(),
    })
}

/// What the create form asks for.
#[derive(Debug, Default, PartialEq)]
pub struct ClusterForm {
    pub namespace: String,
    pub name: String,
    pub template: String,
    pub size: Option<u32>,
    pub services: Vec<String>,
    pub node_class: Option<String>,
    pub config: BTreeMap<String, String>,
}

impl ClusterForm {
    /// The form's fields: `services` a list (commas, spaces or lines) or
    /// one checkbox `service.NAME` each; `config` one `KEY=VALUE` per line,
    /// and `config.KEY` fields (a template's keys) win over its lines.
    pub fn parse(fields: &BTreeMap<String, String>) -> Self {
        let field = |k: &str| {
            fields
                .get(k)
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let prefixed = |prefix: &'static str| {
            fields
                .iter()
                .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.trim())))
                .filter(|(k, _)| !k.is_empty())
        };
        let mut form = Self {
            namespace: field("namespace"),
            name: field("name"),
            template: field("template"),
            size: field("size").parse().ok(),
            services: field("services")
                .split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            node_class: Some(field("nodeClass")).filter(|c| !c.is_empty()),
            config: field("config")
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .collect(),
        };
        form.services.extend(
            prefixed("service.")
                .filter(|(_, on)| *on == "on")
                .map(|(s, _)| s.to_owned()),
        );
        form.config
            .extend(prefixed("config.").map(|(k, v)| (k.to_owned(), v.to_owned())));
        form
    }

    /// The Cluster it describes.
    pub fn cluster(&self) -> serde_json::Value {
        let mut spec = json!({ "template": self.template, "size": self.size.unwrap_or(0) });
        if !self.services.is_empty() {
            spec["services"] = json!(self.services);
        }
        if let Some(class) = &self.node_class {
            spec["nodeClass"] = json!(class);
        }
        if !self.config.is_empty() {
            spec["config"] = json!(self.config);
        }
        json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": self.name, "namespace": self.namespace },
            "spec": spec
        })
    }
}

/// The preview of a form: the layout the solver finds, or why there is
/// none.
#[derive(Template)]
#[template(path = "dashboard/cluster_preview.html")]
pub struct Preview {
    pub size: u32,
    pub template: String,
    /// Node, class, services.
    pub nodes: Vec<(String, String, String)>,
    pub cost: String,
    /// Why there is no layout, or what is wrong with the request.
    pub problem: String,
}

/// `POST /ui/clusters/preview`: solves the form's request against the
/// catalog as the user reads it.
pub async fn preview(
    Button {
        session,
        fields,
        headers,
    }: Button,
) -> Response {
    let form = ClusterForm::parse(&fields);
    let show = |preview: Preview| match preview.render() {
        Ok(html) => axum::response::Html(html).into_response(),
        Err(err) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "refused",
            &err.to_string(),
        ),
    };
    let mut preview = Preview {
        size: form.size.unwrap_or(0),
        template: form.template.clone(),
        nodes: Vec::new(),
        cost: String::new(),
        problem: String::new(),
    };
    if form.template.is_empty() || form.size.is_none_or(|s| s == 0) {
        preview.problem = "Choose a template and a size of at least 1.".into();
        return show(preview);
    }
    let all = kube::api::ListParams::default();
    let (service_api, class_api, template_api) = (
        Api::<ServiceDefinition>::all(session.client.clone()),
        Api::<NodeClass>::all(session.client.clone()),
        Api::<ClusterTemplate>::all(session.client.clone()),
    );
    let (services, classes, templates) = futures::join!(
        service_api.list(&all),
        class_api.list(&all),
        template_api.list(&all),
    );
    let (services, classes, templates) = match (services, classes, templates) {
        (Ok(s), Ok(c), Ok(t)) => (s.items, c.items, t.items),
        (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
            return refused(&headers, "read the catalog", &err);
        }
    };
    let catalog = Catalog::of(&services, &classes, &templates);
    let request = Request {
        size: form.size.unwrap_or(0),
        services: form.services.clone(),
        node_class: form.node_class.clone(),
    };
    let prefix = if form.name.is_empty() {
        form.template.clone()
    } else {
        form.name.clone()
    };
    let template = form.template.clone();
    let solved = tokio::task::spawn_blocking(move || {
        crate::layout::solve_request(&catalog, &template, &request, &[], &prefix)
    })
    .await;
    match solved {
        Ok(Ok(Outcome::Solved { layout, objective })) => {
            preview.nodes = layout
                .into_iter()
                .map(|n| (n.name, n.node_class, n.services.join(", ")))
                .collect();
            preview.cost = objective.cost.to_string();
        }
        Ok(Ok(Outcome::Unsatisfiable(explanation))) => {
            preview.problem = format!("No layout: {explanation}");
        }
        Ok(Err(err)) => preview.problem = err.to_string(),
        Err(err) => preview.problem = format!("the solver stopped: {err}"),
    }
    show(preview)
}

/// `POST /ui/clusters`: creates the form's Cluster as the user; the page
/// then goes to the cluster's page. The API server's validation errors
/// are shown next to the field they name.
pub async fn create(
    Button {
        session,
        fields,
        headers,
    }: Button,
) -> Response {
    let form = ClusterForm::parse(&fields);
    if form.namespace.is_empty() || form.name.is_empty() {
        return answer(
            StatusCode::BAD_REQUEST,
            "refused",
            "A cluster needs a namespace and a name.",
        );
    }
    let cluster: Cluster = match serde_json::from_value(form.cluster()) {
        Ok(cluster) => cluster,
        Err(err) => return answer(StatusCode::BAD_REQUEST, "refused", &err.to_string()),
    };
    match Api::<Cluster>::namespaced(session.client.clone(), &form.namespace)
        .create(&Default::default(), &cluster)
        .await
    {
        Ok(_) => {
            let to = format!("/ui/clusters/{}/{}", form.namespace, form.name);
            (StatusCode::CREATED, [("hx-redirect", to)], "created").into_response()
        }
        Err(kube::Error::Api(status)) if status.code == 422 => {
            let paths = [
                "metadata.name",
                "spec.template",
                "spec.size",
                "spec.services",
                "spec.nodeClass",
                "spec.config",
            ]
            .map(str::to_owned);
            let mut response =
                axum::response::Html(super::forms::field_errors(&status.message, &paths))
                    .into_response();
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            response
        }
        Err(err) => refused(
            &headers,
            &format!("create Cluster {}/{}", form.namespace, form.name),
            &err,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_form_becomes_a_cluster() {
        let fields: BTreeMap<String, String> = [
            ("namespace", "team"),
            ("name", "shop"),
            ("template", "web"),
            ("size", "3"),
            ("services", "web, db"),
            ("nodeClass", ""),
            ("config", "region=eu\n\nbad line\nsize = large"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let form = ClusterForm::parse(&fields);
        assert_eq!(form.size, Some(3));
        assert_eq!(form.services, ["web", "db"]);
        assert_eq!(form.node_class, None);
        let cluster = form.cluster();
        assert_eq!(
            cluster["metadata"],
            json!({ "name": "shop", "namespace": "team" })
        );
        assert_eq!(
            cluster["spec"],
            json!({ "template": "web", "size": 3, "services": ["web", "db"], "config": { "region": "eu", "size": "large" } })
        );
        let _: Cluster = serde_json::from_value(cluster).expect("a Cluster");
    }

    #[test]
    fn a_template_decides_the_form_s_fields_and_they_become_the_spec() {
        let templates: Vec<ClusterTemplate> = serde_json::from_value(json!([
            { "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterTemplate",
              "metadata": { "name": "base" },
              "spec": { "partial": true, "defaults": { "config": { "region": "eu", "tier": "gold" } } } },
            { "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterTemplate",
              "metadata": { "name": "shop" },
              "spec": {
                "includes": ["base"],
                "compatibility": { "services": ["web", "db", "cache"], "nodeClasses": ["small", "large"] },
                "defaults": { "services": ["web", "db"], "nodeClass": "small" },
                "constraints": { "size": { "min": 2, "max": 8 } } },
              "status": { "feasibleSizes": ["2-8"] } }
        ]))
        .unwrap();
        let form = ClusterForm {
            size: Some(5),
            config: [("tier".to_owned(), "silver".to_owned())].into(),
            ..ClusterForm::default()
        };
        let fields = TemplateFields::of(&templates, "shop", &form);
        assert_eq!((fields.min, fields.max, fields.size.as_str()), (2, 8, "5"));
        assert_eq!(
            fields.services,
            [
                ("web".into(), true),
                ("db".into(), true),
                ("cache".into(), false)
            ]
        );
        assert_eq!(fields.classes, ["small", "large"]);
        assert_eq!(
            fields.config,
            [
                ("region".into(), "eu".into()),
                ("tier".into(), "silver".into())
            ],
            "the included template's keys, what the form held kept"
        );
        let html = fields.render().unwrap();
        assert!(html.contains(r#"name="service.cache""#), "{html}");
        assert!(
            html.contains(r#"name="config.region" value="eu""#),
            "{html}"
        );
        assert!(html.contains(r#"min="2" max="8""#), "{html}");
        let unknown = TemplateFields::of(&templates, "nope", &form);
        assert!(unknown.problem.contains("nope"), "{}", unknown.problem);

        // What the browser sends back.
        let sent: BTreeMap<String, String> = [
            ("namespace", "team"),
            ("name", "shop-1"),
            ("template", "shop"),
            ("size", "4"),
            ("service.web", "on"),
            ("service.cache", "on"),
            ("config.region", "us"),
            ("config", "extra=1\nregion=ignored"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let form = ClusterForm::parse(&sent);
        assert_eq!(form.services, ["cache", "web"]);
        assert_eq!(
            form.cluster()["spec"]["config"],
            json!({ "extra": "1", "region": "us" })
        );
    }
}
