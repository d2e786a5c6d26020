//! `theseus app` and `theseus capability`: install, start, stop, remove
//! and show application instances by application, role and id, and show
//! which cluster capabilities hold and on which nodes they fail.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::api::conditions::{self, types};
use crate::api::{AppInstance, AppPackage, ClusterCapability, Role};

/// Install, start, stop, remove and list application instances.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus app install spark --id fwlogs --role prod --set workers=4\n  \
    theseus app install spark --id fwlogs --role prod --no-start\n  \
    theseus app stop spark --id fwlogs --role prod\n  \
    theseus app start spark --id fwlogs --role prod\n  \
    theseus app remove spark --id fwlogs --role prod --keep-data\n  \
    theseus app status spark --id fwlogs --role prod\n  \
    theseus app list\n\n\
    An instance lives in its role's namespace as the AppInstance APP-ID; follow it with\n  \
    kubectl wait -n NAMESPACE appinstance/APP-ID --for=condition=Available")]
pub struct AppArgs {
    #[command(subcommand)]
    pub command: AppCommand,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// List instances (all roles, or one namespace).
    #[command(after_help = "Examples:\n  theseus app list\n  theseus app list -n prod")]
    List {
        /// Only this namespace.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Install an instance (and start it unless --no-start).
    #[command(after_help = "Examples:\n  \
        theseus app install spark --id fwlogs --role prod --set workers=4\n  \
        theseus app install spark --id fwlogs --role prod --version 3.5.0 --no-start\n\n\
        The instance is the AppInstance APP-ID in the role's namespace; an id is taken\n\
        once per role.")]
    Install {
        #[command(flatten)]
        target: Target,
        /// The version; default the application's last.
        #[arg(long)]
        version: Option<String>,
        /// A parameter value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        values: Vec<String>,
        /// Install only: directories, env file and configuration, nothing
        /// running (`state: Installed`).
        #[arg(long)]
        no_start: bool,
        /// A label the instance's nodes must carry (repeatable).
        #[arg(long = "node-selector", value_name = "KEY=VALUE")]
        node_selector: Vec<String>,
        /// A label of the AppInstance itself (repeatable), e.g. the one an
        /// operator's --selector matches.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Run an installed instance (`state: Running`).
    #[command(after_help = "Examples:\n  theseus app start spark --id fwlogs --role prod")]
    Start {
        #[command(flatten)]
        target: Target,
    },
    /// Stop an instance and keep everything (`state: Installed`).
    #[command(after_help = "Examples:\n  theseus app stop spark --id fwlogs --role prod")]
    Stop {
        #[command(flatten)]
        target: Target,
    },
    /// Remove an instance: its run objects and, unless --keep-data, its
    /// directories. The application's stage stays.
    #[command(after_help = "Examples:\n  \
        theseus app remove spark --id fwlogs --role prod               # directories removed\n  \
        theseus app remove spark --id fwlogs --role prod --keep-data   # directories kept")]
    Remove {
        #[command(flatten)]
        target: Target,
        /// Keep the instance's directories (`deletionPolicy: Retain`).
        #[arg(long)]
        keep_data: bool,
    },
    /// Show an instance's phase, home, endpoints and conditions.
    #[command(after_help = "Examples:\n  theseus app status spark --id fwlogs --role prod")]
    Status {
        #[command(flatten)]
        target: Target,
    },
}

/// An instance by application, id and role.
#[derive(Args, Debug)]
pub struct Target {
    /// The application (AppPackage).
    pub app: String,
    /// The instance id: lowercase letters and digits.
    #[arg(long)]
    pub id: String,
    /// The Role the instance is in.
    #[arg(long)]
    pub role: String,
}

/// Show the cluster's capabilities.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  theseus capability list")]
pub struct CapabilityArgs {
    #[command(subcommand)]
    pub command: CapabilityCommand,
}

/// What to show.
#[derive(Subcommand, Debug)]
pub enum CapabilityCommand {
    /// Which capabilities hold, and on which nodes they fail and why.
    #[command(after_help = "Examples:\n  theseus capability list")]
    List,
}

pub(crate) async fn client() -> anyhow::Result<Client> {
    Client::try_default()
        .await
        .context("cannot reach Kubernetes; check KUBECONFIG")
}

/// The namespace of the role named `role`.
async fn namespace(client: &Client, role: &str) -> anyhow::Result<String> {
    let r = Api::<Role>::all(client.clone())
        .get_opt(role)
        .await
        .context("cannot read Roles; are the CRDs installed (theseus crds)?")?
        .with_context(|| {
            format!("there is no Role {role}; list them with kubectl get roles.theseus.dev")
        })?;
    Ok(crate::apps::role::namespace_of(&r))
}

pub(crate) fn pairs(entries: &[String], flag: &str) -> anyhow::Result<BTreeMap<String, String>> {
    entries
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("{flag} {e:?} is not KEY=VALUE"),
        })
        .collect()
}

/// Runs `theseus app`.
pub async fn run(args: AppArgs) -> anyhow::Result<()> {
    let client = client().await?;
    match args.command {
        AppCommand::List { namespace } => {
            let api: Api<AppInstance> = match &namespace {
                Some(ns) => Api::namespaced(client, ns),
                None => Api::all(client),
            };
            let list = api
                .list(&ListParams::default())
                .await
                .context("cannot list AppInstances; are the CRDs installed (theseus crds)?")?;
            print!("{}", render_instances(&list.items));
        }
        AppCommand::Install {
            target,
            version,
            values,
            no_start,
            node_selector,
            labels,
        } => {
            let ns = namespace(&client, &target.role).await?;
            let app = Api::<AppPackage>::all(client.clone())
                .get_opt(&target.app)
                .await?
                .with_context(|| format!("there is no AppPackage {}", target.app))?;
            let version = match version {
                Some(v) => v,
                None => app
                    .spec
                    .versions
                    .last()
                    .map(|v| v.version.clone())
                    .context("the application has no versions")?,
            };
            let name = format!("{}-{}", target.app, target.id);
            let instance: AppInstance = serde_json::from_value(json!({
                "apiVersion": "theseus.dev/v1alpha1", "kind": "AppInstance",
                "metadata": { "name": name, "namespace": ns, "labels": pairs(&labels, "--label")? },
                "spec": {
                    "app": target.app, "version": version, "id": target.id, "role": target.role,
                    "values": pairs(&values, "--set")?,
                    "nodeSelector": pairs(&node_selector, "--node-selector")?,
                    "state": if no_start { "Installed" } else { "Running" },
                }
            }))?;
            match Api::<AppInstance>::namespaced(client, &ns)
                .create(&PostParams::default(), &instance)
                .await
            {
                Ok(_) => println!(
                    "appinstance {ns}/{name} created; follow it with: kubectl wait -n {ns} appinstance/{name} --for=condition={}",
                    if no_start {
                        "StorageReady"
                    } else {
                        "Available"
                    }
                ),
                Err(kube::Error::Api(e)) if e.code == 409 => bail!(
                    "id {} is taken in role {}: AppInstance {ns}/{name} exists",
                    target.id,
                    target.role
                ),
                Err(e) => return Err(e).context(format!("cannot create AppInstance {ns}/{name}")),
            }
        }
        AppCommand::Start { target } => set_state(&client, &target, "Running").await?,
        AppCommand::Stop { target } => set_state(&client, &target, "Installed").await?,
        AppCommand::Remove { target, keep_data } => {
            let ns = namespace(&client, &target.role).await?;
            let name = format!("{}-{}", target.app, target.id);
            let api: Api<AppInstance> = Api::namespaced(client, &ns);
            let policy = if keep_data { "Retain" } else { "Delete" };
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "deletionPolicy": policy } })),
            )
            .await
            .with_context(|| format!("cannot update AppInstance {ns}/{name}"))?;
            api.delete(&name, &DeleteParams::default())
                .await
                .with_context(|| format!("cannot delete AppInstance {ns}/{name}"))?;
            println!(
                "appinstance {ns}/{name} is being removed ({}); follow it with: kubectl wait -n {ns} appinstance/{name} --for=delete",
                if keep_data {
                    "directories kept"
                } else {
                    "directories removed"
                }
            );
        }
        AppCommand::Status { target } => {
            let ns = namespace(&client, &target.role).await?;
            let name = format!("{}-{}", target.app, target.id);
            let i = Api::<AppInstance>::namespaced(client, &ns)
                .get_opt(&name)
                .await?
                .with_context(|| format!("there is no AppInstance {ns}/{name}"))?;
            print!("{}", render_status(&i));
        }
    }
    Ok(())
}

async fn set_state(client: &Client, target: &Target, state: &str) -> anyhow::Result<()> {
    let ns = namespace(client, &target.role).await?;
    let name = format!("{}-{}", target.app, target.id);
    Api::<AppInstance>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "state": state } })),
        )
        .await
        .with_context(|| format!("cannot update AppInstance {ns}/{name}"))?;
    println!("appinstance {ns}/{name}: state {state}");
    Ok(())
}

/// The table of `theseus app list`.
pub fn render_instances(items: &[AppInstance]) -> String {
    let mut out = format!(
        "{:<24} {:<24} {:<12} {:<10} {:<12} {:<9} {:<12} {}\n",
        "NAMESPACE", "NAME", "APP", "VERSION", "ROLE", "STATE", "PHASE", "HOME"
    );
    for i in items {
        let status = i.status.clone().unwrap_or_default();
        out.push_str(&format!(
            "{:<24} {:<24} {:<12} {:<10} {:<12} {:<9} {:<12} {}\n",
            i.namespace().unwrap_or_default(),
            i.name_any(),
            i.spec.app,
            i.spec.version,
            i.spec.role,
            format!("{:?}", i.spec.state),
            format!("{:?}", status.phase),
            status.home.unwrap_or_else(|| "-".into())
        ));
    }
    out
}

/// The text of `theseus app status`.
pub fn render_status(i: &AppInstance) -> String {
    let status = i.status.clone().unwrap_or_default();
    let mut out = format!(
        "instance:  {}/{}\napp:       {} {}\nrole:      {}\nstate:     {:?}\nphase:     {:?}\nhome:      {}\n",
        i.namespace().unwrap_or_default(),
        i.name_any(),
        i.spec.app,
        i.spec.version,
        i.spec.role,
        i.spec.state,
        status.phase,
        status.home.as_deref().unwrap_or("-"),
    );
    for e in &status.endpoints {
        let ports: Vec<String> = e.ports.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "endpoint:  {} {} {}\n",
            e.node,
            e.address,
            ports.join(",")
        ));
    }
    for c in &status.conditions {
        out.push_str(&format!(
            "{:<16} {:<6} {:<24} {}\n",
            c.type_, c.status, c.reason, c.message
        ));
    }
    out
}

/// Runs `theseus capability`.
pub async fn run_capability(args: CapabilityArgs) -> anyhow::Result<()> {
    let CapabilityCommand::List = args.command;
    let client = client().await?;
    let list = Api::<ClusterCapability>::all(client)
        .list(&ListParams::default())
        .await
        .context("cannot list ClusterCapabilities; are the CRDs installed (theseus crds)?")?;
    print!("{}", render_capabilities(&list.items));
    Ok(())
}

/// The table of `theseus capability list`: one line per capability, then
/// one per failing node.
pub fn render_capabilities(items: &[ClusterCapability]) -> String {
    let mut out = format!(
        "{:<32} {:<9} {:>5}  {}\n",
        "NAME", "AVAILABLE", "NODES", "FAILING"
    );
    for c in items {
        let s = c.status.clone().unwrap_or_default();
        let available = conditions::find(&s.conditions, types::AVAILABLE)
            .map_or("Unknown".to_owned(), |c| c.status.clone());
        out.push_str(&format!(
            "{:<32} {:<9} {:>5}  {}\n",
            c.name_any(),
            available,
            format!("{}/{}", s.nodes_ready, s.nodes_total),
            s.failing.len()
        ));
        for f in &s.failing {
            out.push_str(&format!("  {} {}: {}\n", f.node, f.reason, f.message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capability_table_names_each_failing_node_with_its_reason() {
        let c: ClusterCapability = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "ClusterCapability",
            "metadata": { "name": "shared-fs" },
            "spec": { "sharedFilesystem": { "path": "/zeta" } },
            "status": {
                "nodesReady": 2, "nodesTotal": 3,
                "failing": [{ "node": "n3", "reason": "ProbeFailed", "message": "/zeta is not the shared filesystem" }],
                "conditions": [{ "type": "Available", "status": "False", "reason": "NodesLack",
                                 "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" }]
            }
        }))
        .unwrap();
        let text = render_capabilities(&[c]);
        assert!(text.contains("shared-fs"), "{text}");
        assert!(text.contains("2/3"), "{text}");
        assert!(
            text.contains("  n3 ProbeFailed: /zeta is not the shared filesystem"),
            "{text}"
        );
    }

    #[test]
    fn pairs_name_a_bad_entry() {
        assert_eq!(pairs(&["a=1".into()], "--set").unwrap()["a"], "1");
        assert!(
            pairs(&["a".into()], "--set")
                .unwrap_err()
                .to_string()
                .contains("--set \"a\"")
        );
    }
}
