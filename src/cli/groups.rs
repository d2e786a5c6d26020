//! `theseus groups`: a viewer of ServiceGroups — desired, ready and
//! published containers — filtered by group labels.

use anyhow::Context as _;
use clap::Args;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::api::ServiceGroup;
use crate::api::conditions::{self, types};

/// Show service groups with desired, ready and published containers.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus groups\n  \
    theseus groups -l canary,eu\n  \
    theseus groups -n prod")]
pub struct GroupsArgs {
    /// Only groups that carry all of these labels (comma-separated).
    #[arg(long, short = 'l', value_delimiter = ',')]
    pub labels: Vec<String>,

    /// Only this namespace (default: all namespaces).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// One line of the viewer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Service.
    pub service: String,
    /// Encoded group (or `-` before the first status).
    pub group: String,
    /// `spec.replicas`.
    pub desired: i32,
    /// Ready containers.
    pub ready: i32,
    /// Published containers.
    pub published: i32,
    /// `Available`, `Conflict`… what needs attention, in one word.
    pub state: String,
}

/// Runs `theseus groups`.
pub fn run(args: &GroupsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = Client::try_default()
            .await
            .context("cannot reach Kubernetes; check KUBECONFIG")?;
        let api: Api<ServiceGroup> = match &args.namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let list = api
            .list(&ListParams::default())
            .await
            .context("cannot list ServiceGroups; are the CRDs installed (theseus crds)?")?;
        print!("{}", render(&rows(&list.items, &args.labels)));
        Ok(())
    })
}

/// The rows of the groups that carry every label in `labels`, sorted.
pub fn rows(groups: &[ServiceGroup], labels: &[String]) -> Vec<Row> {
    let wanted: Vec<String> = labels.iter().map(|l| l.trim().to_lowercase()).collect();
    let mut rows: Vec<Row> = groups
        .iter()
        .filter(|sg| {
            wanted
                .iter()
                .all(|w| sg.spec.labels.iter().any(|l| l.to_lowercase() == *w))
        })
        .map(row)
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

fn row(sg: &ServiceGroup) -> Row {
    let status = sg.status.clone().unwrap_or_default();
    let state = if conditions::is_true(&status.conditions, types::CONFLICT) {
        "Conflict"
    } else if conditions::is_true(&status.conditions, types::AVAILABLE)
        && conditions::is_true(&status.conditions, types::PUBLISHED)
    {
        "Available"
    } else if conditions::is_true(&status.conditions, types::PROGRESSING) {
        "Progressing"
    } else {
        "Pending"
    };
    Row {
        namespace: sg.namespace().unwrap_or_default(),
        name: sg.name_any(),
        service: sg.spec.service.clone(),
        group: status.group.unwrap_or_else(|| "-".into()),
        desired: sg.spec.replicas,
        ready: status.ready_replicas,
        published: status.published_containers,
        state: state.into(),
    }
}

/// The table `theseus groups` prints.
pub fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<20} {:<24} {:<16} {:<24} {:>7} {:>5} {:>9}  {}\n",
        "NAMESPACE", "NAME", "SERVICE", "GROUP", "DESIRED", "READY", "PUBLISHED", "STATE"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:<24} {:<16} {:<24} {:>7} {:>5} {:>9}  {}\n",
            r.namespace, r.name, r.service, r.group, r.desired, r.ready, r.published, r.state
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mk_group(name: &str, labels: &[&str], ready: i32) -> ServiceGroup {
        serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ServiceGroup",
            "metadata": { "name": name, "namespace": "prod" },
            "spec": { "service": "web", "labels": labels, "replicas": 3,
                      "template": { "image": "web:1" } },
            "status": { "group": labels.join("."), "replicas": 3, "readyReplicas": ready,
                        "publishedContainers": ready }
        }))
        .unwrap()
    }

    #[test]
    fn only_groups_with_every_requested_label_are_shown() {
        let groups = [
            mk_group("a", &["canary", "eu"], 3),
            mk_group("b", &["eu"], 1),
            mk_group("c", &["us"], 0),
        ];
        let names = |labels: &[&str]| -> Vec<String> {
            let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
            rows(&groups, &labels).into_iter().map(|r| r.name).collect()
        };
        assert_eq!(names(&[]), vec!["a", "b", "c"]);
        assert_eq!(names(&["eu"]), vec!["a", "b"]);
        assert_eq!(names(&["EU", "canary"]), vec!["a"]);
        assert!(names(&["asia"]).is_empty());
    }

    #[test]
    fn a_row_shows_desired_ready_and_published() {
        let r = &rows(&[mk_group("a", &["eu"], 2)], &[])[0];
        assert_eq!((r.desired, r.ready, r.published), (3, 2, 2));
        assert_eq!(r.group, "eu");
        assert!(render(std::slice::from_ref(r)).contains("PUBLISHED"));
    }
}
