//! What the rollout and operator tests share: a namespace for the lease and
//! halt, the demo repository as a PackageRepository, simulated nodes, a
//! PackageSet of demo-web, and `theseus operator` processes confined to the
//! test's objects (`--selector`).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use theseus::api::conditions;
use theseus::api::{PackageRepository, PackageSet};

use crate::support::agents::Repo;
use crate::support::fleet::{Fleet, Operator, RUN_LABEL};
use crate::support::{TestNamespace, TestbedEnv, eventually, test_logs};

/// demo-web, each version requiring demo-config.
pub const V1: &str = "demo-web--1.0.0";
/// The second version.
pub const V2: &str = "demo-web--2.0.0";
/// The third version, whose service fails its health check.
pub const V3: &str = "demo-web--3.0.0";
/// demo-config.
pub const CONFIG: &str = "demo-config--1.0.0";

/// One test's objects and processes.
pub struct Rig {
    pub tb: TestbedEnv,
    pub client: Client,
    pub ns: TestNamespace,
    pub run: String,
    pub repo: Repo,
    pub logs: PathBuf,
}

impl Rig {
    /// A namespace, the demo repository and its PackageRepository; `None`
    /// (after saying why) when the testbed is not up outside CI.
    pub async fn new(tag: &str) -> Option<Rig> {
        let tb = crate::support::testbed()?;
        crate::support::apply_crds(&tb);
        let client = tb.client().await;
        let ns = TestNamespace::create(&tb, &client, tag).await;
        let run = ns.name.clone();
        let logs = test_logs(&run);
        let rig = Rig {
            tb,
            client,
            ns,
            run,
            repo: Repo::demo(),
            logs,
        };
        let repo: PackageRepository = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageRepository",
            "metadata": { "name": rig.run, "labels": { RUN_LABEL: rig.run } },
            "spec": { "url": rig.repo.url, "refreshIntervalSeconds": 10 }
        }))
        .unwrap();
        Api::<PackageRepository>::all(rig.client.clone())
            .create(&PostParams::default(), &repo)
            .await
            .unwrap();
        Some(rig)
    }

    /// `n` simulated nodes of this run, each switching in `switch`.
    pub async fn fleet(&self, n: usize, switch: Duration) -> Fleet {
        Fleet::start(&self.client, &self.run, &self.run, n, switch).await
    }

    /// An operator confined to this run's objects (lease of 4 s).
    pub fn operator(&self, identity: &str) -> Operator {
        self.operator_with(identity, &[])
    }

    /// Like [`Rig::operator`], with extra environment.
    pub fn operator_with(&self, identity: &str, env: &[(&str, &str)]) -> Operator {
        Operator::start_with(
            &self.tb,
            &self.ns.name,
            &self.run,
            identity,
            &self.logs,
            &[],
            env,
        )
    }

    /// The operator's log.
    pub fn log(&self, identity: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("operator-{identity}.log")))
            .unwrap_or_default()
    }

    pub fn sets(&self) -> Api<PackageSet> {
        Api::all(self.client.clone())
    }

    /// Applies the set of `web` and demo-config with `maxUnavailable`.
    pub async fn apply_set(&self, web: &[&str], max_unavailable: i32) {
        let packages: Vec<&str> = web.iter().copied().chain([CONFIG]).collect();
        let set = json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
            "metadata": { "name": self.run, "labels": { RUN_LABEL: self.run } },
            "spec": {
                "repository": self.run,
                "packages": packages,
                "nodeSelector": { "matchLabels": { RUN_LABEL: self.run } },
                "strategy": { "maxUnavailable": max_unavailable, "failureThreshold": 1 }
            }
        });
        self.sets()
            .patch(
                &self.run,
                &PatchParams::apply("rollout-test").force(),
                &Patch::Apply(&set),
            )
            .await
            .unwrap();
    }

    /// Waits until the set's current generation has condition `type_` with
    /// `status`; the set then.
    pub async fn wait_condition(&self, type_: &str, status: &str, timeout: Duration) -> PackageSet {
        let (sets, name) = (self.sets(), self.run.clone());
        eventually(timeout, &format!("{type_}={status}"), || {
            let (sets, name) = (sets.clone(), name.clone());
            async move {
                let set = sets.get(&name).await.map_err(|e| e.to_string())?;
                let st = set.status.clone().unwrap_or_default();
                let current = st.observed_generation == set.metadata.generation;
                match conditions::find(&st.conditions, type_) {
                    Some(c) if current && c.status == status => Ok(set),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    }

    /// The holder of the leader Lease.
    pub async fn holder(&self) -> Result<String, String> {
        let lease = Api::<Lease>::namespaced(self.client.clone(), &self.ns.name)
            .get("theseus-operator")
            .await
            .map_err(|e| e.to_string())?;
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .ok_or_else(|| "no holder".to_owned())
    }

    /// Waits until `identity` holds the lease.
    pub async fn wait_holder(&self, identity: &str, timeout: Duration) {
        eventually(timeout, &format!("{identity} leads"), || async {
            match self.holder().await {
                Ok(h) if h == identity => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// Removes the nodes, the set, the repository and the namespace.
    pub async fn clean_up(self, fleet: Fleet) {
        fleet.remove().await;
        let _ = self
            .sets()
            .delete(&self.run, &DeleteParams::default())
            .await;
        let _ = Api::<PackageRepository>::all(self.client.clone())
            .delete(&self.run, &DeleteParams::default())
            .await;
        self.ns.delete(&self.client).await;
    }
}

/// Sends `signal` (`STOP`, `CONT`, …) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}
