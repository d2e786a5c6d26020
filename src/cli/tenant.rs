//! `theseus tenant`: list tenants with their usage against quota, create
//! one, and show one tenant's usage and reservations.

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};

use super::app::{client, pairs};
use crate::api::{
    Quotas, RoleSubject, Tenant, TenantCatalog, TenantNamespaces, TenantSpec, conditions,
};

/// List, create and inspect tenants.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus tenant list\n  \
    theseus tenant create blue --member User:ana --max-nodes 20 --templates tier=standard\n  \
    theseus tenant usage blue")]
pub struct TenantArgs {
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Every tenant: namespaces, usage against quota, Ready.
    #[command(after_help = "Examples:\n  theseus tenant list")]
    List,
    /// Create a tenant (then `kubectl wait --for=condition=Ready tenant/NAME`).
    #[command(after_help = "Examples:\n  \
        theseus tenant create blue --member User:ana --member Group:blue-devs --owner User:lee\n  \
        theseus tenant create blue --namespace blue-prod --namespace blue-dev --max-clusters 4 --max-nodes 20 --workers 4\n  \
        theseus tenant create blue --templates tier=standard --label team=blue --dry-run")]
    Create(Box<CreateArgs>),
    /// One tenant's usage per quota, and what each cluster and instance
    /// holds.
    #[command(after_help = "Examples:\n  theseus tenant usage blue")]
    Usage {
        /// The tenant.
        name: String,
    },
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// The tenant's name.
    name: String,
    /// A namespace of the tenant (repeat); default: one named as the tenant.
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    namespaces: Vec<String>,
    /// An owner, `User:NAME` or `Group:NAME` (repeat).
    #[arg(long = "owner", value_name = "KIND:NAME")]
    owners: Vec<String>,
    /// A member, `User:NAME` or `Group:NAME` (repeat).
    #[arg(long = "member", value_name = "KIND:NAME")]
    members: Vec<String>,
    /// The ClusterTemplates its clusters may use: labels KEY=VALUE (repeat).
    #[arg(long = "templates", value_name = "KEY=VALUE")]
    templates: Vec<String>,
    /// The most clusters.
    #[arg(long)]
    max_clusters: Option<i64>,
    /// The most nodes over every cluster.
    #[arg(long)]
    max_nodes: Option<i64>,
    /// The most CPU over every node (e.g. 64, 500m).
    #[arg(long)]
    max_cpu: Option<String>,
    /// The most memory over every node (e.g. 256Gi).
    #[arg(long)]
    max_memory: Option<String>,
    /// The most application instances.
    #[arg(long)]
    max_app_instances: Option<i64>,
    /// The most plan tasks running at once.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=10000))]
    workers: Option<i32>,
    /// A label of the Tenant, KEY=VALUE (repeat).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Print the Tenant as YAML instead of creating it.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `theseus tenant`.
pub async fn run(args: TenantArgs) -> anyhow::Result<()> {
    match args.command {
        TenantCommand::Create(a) if a.dry_run => {
            let tenant = tenant(&a)?;
            print!("{}", serde_yaml::to_string(&tenant)?);
            Ok(())
        }
        TenantCommand::Create(a) => {
            let tenant = tenant(&a)?;
            let api: Api<Tenant> = Api::all(client().await?);
            api.create(&PostParams::default(), &tenant)
                .await
                .with_context(|| format!("cannot create Tenant {}", a.name))?;
            println!(
                "tenant {} created; wait for it: kubectl wait --for=condition=Ready tenant/{}",
                a.name, a.name
            );
            Ok(())
        }
        TenantCommand::List => {
            let api: Api<Tenant> = Api::all(client().await?);
            let list = api
                .list(&ListParams::default())
                .await
                .context("cannot list Tenants; are the CRDs installed (theseus crds)?")?;
            std::io::stdout()
                .lock()
                .write_all(list_table(&list.items).as_bytes())?;
            Ok(())
        }
        TenantCommand::Usage { name } => {
            let api: Api<Tenant> = Api::all(client().await?);
            let tenant = api
                .get_opt(&name)
                .await
                .context("cannot read Tenants; are the CRDs installed (theseus crds)?")?
                .with_context(|| {
                    format!("there is no Tenant {name}; list them with theseus tenant list")
                })?;
            std::io::stdout()
                .lock()
                .write_all(usage_table(&tenant).as_bytes())?;
            Ok(())
        }
    }
}

/// `KIND:NAME` as a subject.
fn subject(entry: &str, flag: &str) -> anyhow::Result<RoleSubject> {
    match entry.split_once(':') {
        Some((kind @ ("User" | "Group"), name)) if !name.is_empty() => Ok(RoleSubject {
            kind: kind.to_owned(),
            name: name.to_owned(),
        }),
        _ => anyhow::bail!("{flag} {entry:?} is not User:NAME or Group:NAME"),
    }
}

/// The Tenant the flags describe.
fn tenant(a: &CreateArgs) -> anyhow::Result<Tenant> {
    let subjects = |entries: &[String], flag: &str| -> anyhow::Result<Vec<RoleSubject>> {
        entries.iter().map(|e| subject(e, flag)).collect()
    };
    let templates = pairs(&a.templates, "--templates")?;
    let spec = TenantSpec {
        owners: subjects(&a.owners, "--owner")?,
        members: subjects(&a.members, "--member")?,
        namespaces: TenantNamespaces {
            names: a.namespaces.clone(),
            ..TenantNamespaces::default()
        },
        catalog: TenantCatalog {
            templates: (!templates.is_empty()).then(|| LabelSelector {
                match_labels: Some(templates),
                ..LabelSelector::default()
            }),
            ..TenantCatalog::default()
        },
        quotas: Quotas {
            clusters: a.max_clusters,
            nodes: a.max_nodes,
            cpu: a.max_cpu.clone().map(Quantity),
            memory: a.max_memory.clone().map(Quantity),
            app_instances: a.max_app_instances,
            ..Quotas::default()
        },
        workers: a.workers,
        lease: None,
    };
    let mut tenant = Tenant::new(&a.name, spec);
    let labels = pairs(&a.labels, "--label")?;
    if !labels.is_empty() {
        tenant.metadata.labels = Some(labels);
    }
    Ok(tenant)
}

/// Aligned columns: name, namespaces, clusters, nodes, apps, Ready.
fn list_table(tenants: &[Tenant]) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "NAMESPACES".to_owned(),
        "CLUSTERS".to_owned(),
        "NODES".to_owned(),
        "APPS".to_owned(),
        "READY".to_owned(),
    ]];
    for t in tenants {
        let st = t.status.clone().unwrap_or_default();
        let ready = conditions::find(&st.conditions, conditions::types::READY)
            .map_or("Unknown".to_owned(), |c| c.status.clone());
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        rows.push([
            t.name_any(),
            crate::quota::namespaces(t).join(","),
            or_dash(st.summary.clusters),
            or_dash(st.summary.nodes),
            or_dash(st.summary.app_instances),
            ready,
        ]);
    }
    columns(&rows)
}

/// Per quota: used and limit; then each reservation.
fn usage_table(t: &Tenant) -> String {
    let st = t.status.clone().unwrap_or_default();
    let mut rows = vec![["QUOTA".to_owned(), "USED".to_owned(), "LIMIT".to_owned()]];
    rows.extend(
        crate::quota::usage_rows(&t.spec.quotas, &st.usage)
            .into_iter()
            .map(|r| [r.quota, r.used, r.limit]),
    );
    let mut out = columns(&rows);
    out.push('\n');
    let mut held = vec![[
        "RESERVED BY".to_owned(),
        "CLUSTERS".to_owned(),
        "NODES".to_owned(),
        "APPS".to_owned(),
    ]];
    for r in &st.reservations {
        held.push([
            r.object.clone(),
            r.usage.clusters.to_string(),
            r.usage.nodes.to_string(),
            r.usage.app_instances.to_string(),
        ]);
    }
    out.push_str(&columns(&held));
    out
}

/// Rows in columns two spaces apart.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: TenantCommand,
    }

    fn create(args: &[&str]) -> anyhow::Result<Tenant> {
        let cli = Cli::try_parse_from(std::iter::once("tenant").chain(args.iter().copied()))?;
        match cli.command {
            TenantCommand::Create(a) => tenant(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn create_flags_make_the_tenant_and_bad_subjects_are_named() {
        let t = create(&[
            "create",
            "blue",
            "--member",
            "User:ana",
            "--owner",
            "Group:ops",
            "--namespace",
            "blue-prod",
            "--max-nodes",
            "20",
            "--templates",
            "tier=standard",
            "--workers",
            "2",
        ])
        .unwrap();
        assert_eq!(t.spec.members[0].name, "ana");
        assert_eq!(t.spec.owners[0].kind, "Group");
        assert_eq!(t.spec.namespaces.names, ["blue-prod"]);
        assert_eq!(t.spec.quotas.nodes, Some(20));
        assert_eq!(t.spec.workers, Some(2));
        let selector = t.spec.catalog.templates.unwrap();
        assert_eq!(selector.match_labels.unwrap()["tier"], "standard");
        let err = create(&["create", "blue", "--member", "ana"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("--member \"ana\" is not User:NAME or Group:NAME"),
            "{err}"
        );
    }

    #[test]
    fn the_usage_table_shows_used_against_limit_and_who_holds_it() {
        let mut t = create(&["create", "blue", "--max-nodes", "5"]).unwrap();
        let q = t.spec.quotas.clone();
        let st = crate::quota::with_reservation(
            &Default::default(),
            &q,
            ("Cluster blue/db", "u1"),
            Some(crate::api::Usage {
                clusters: 1,
                nodes: 3,
                ..Default::default()
            }),
            k8s_openapi::jiff::Timestamp::now(),
        );
        t.status = Some(st);
        let table = usage_table(&t);
        assert!(table.contains("nodes         3     5"), "{table}");
        assert!(table.contains("clusters      1     -"), "{table}");
        assert!(
            table.contains("Cluster blue/db  1         3      0"),
            "{table}"
        );
        let list = list_table(&[t]);
        assert!(list.contains("blue  blue        1         3/5"), "{list}");
    }
}
