//! The ConfigBundle controller against the testbed: a real operator renders
//! a bundle into a package stored in the API server and served, signed, at
//! its `/config-repository/`; the package activates with `theseus pkg`
//! from there; a render that changes no byte writes nothing; a changed
//! value gives a new id; `theseus config diff` shows a change before it
//! is applied; bad values are all reported with their paths
//! while the last good packages stay; and a secret's value appears in no
//! archive and no status (the operator never reads it).

use std::io::Read;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use theseus::api::{ConfigBundle, ConfigModule};
use theseus::configgen::store::{INDEX_OBJECT, object_name};

use crate::support::fleet::{Operator, RUN_LABEL};
use crate::support::run::stdout_ok;
use crate::support::{TestNamespace, eventually, test_logs, theseus_command, with_crds};

/// The secret's value: it must never be seen anywhere it is not asked for.
pub(crate) const TOKEN: &str = "s3cret-token-value-7f3a";

pub(crate) fn module(name: &str) -> ConfigModule {
    serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1",
        "kind": "ConfigModule",
        "metadata": { "name": name },
        "spec": {
            "version": "1",
            "parameters": {
                "greeting": { "type": "string", "default": "hello" },
                "port": { "type": "integer", "default": 8080, "minimum": 1024, "maximum": 65535 },
                "apiToken": { "type": "string", "secret": true },
                "environment": { "type": "string", "enum": ["dev", "prod"], "default": "dev", "immutable": true }
            },
            "calculations": { "listen": "\"127.0.0.1:\" ~ port" },
            "templates": [
                { "path": "etc/web/web.conf",
                  "content": "greeting = {{ greeting }}\nlisten = {{ listen }}\nenvironment = {{ environment }}\n" },
                { "path": "etc/web/token", "content": "{{ apiToken }}\n" }
            ]
        }
    }))
    .unwrap()
}

async fn rendered(bundles: &Api<ConfigBundle>, want: &str) -> ConfigBundle {
    eventually(
        Duration::from_secs(60),
        &format!("Rendered={want}"),
        || async {
            let b = bundles.get("web").await.map_err(|e| e.to_string())?;
            let status = b.status.clone().unwrap_or_default();
            let cond = status.conditions.iter().find(|c| c.type_ == "Rendered");
            let gen_seen = status.observed_generation == b.metadata.generation;
            match cond {
                Some(c) if c.status == want && gen_seen => Ok(b),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Asserts that the bundle's Rendered condition names each of `expected`.
fn assert_problems(b: &ConfigBundle, expected: &[&str]) {
    let status = b.status.as_ref().unwrap();
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Rendered")
        .unwrap()
        .message;
    for e in expected {
        assert!(message.contains(e), "missing {e} in: {message}");
    }
    assert!(!message.contains(TOKEN), "{message}");
}

fn ids(b: &ConfigBundle) -> Vec<String> {
    b.status
        .as_ref()
        .unwrap()
        .rendered
        .iter()
        .map(|r| r.package_id.clone())
        .collect()
}

/// A fresh signing key at `path` (and `path.pub`); its public key.
pub(crate) fn keygen(path: &std::path::Path) -> String {
    stdout_ok(
        theseus_command()
            .args(["repo", "keygen", "--out"])
            .arg(path),
    )
    .trim()
    .to_owned()
}

/// An operator of `ns`'s objects that signs its generated packages with
/// the key at `key`, with `extra` arguments.
pub(crate) fn operator(
    tb: &crate::support::TestbedEnv,
    ns: &str,
    identity: &str,
    key: &std::path::Path,
    extra: &[&str],
) -> Operator {
    let mut args = vec!["--config-signing-key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    Operator::start_with(tb, ns, ns, identity, &test_logs(ns), &args, &[])
}

pub(crate) fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_renders_into_a_signed_served_package_that_activates_and_changes_only_with_its_bytes()
 {
    let Some(tb) = with_crds() else { return };
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "cfgbundle").await;
    let run = ns.name.clone();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("config.key");
    let public = keygen(&key);
    let op = operator(&tb, &ns.name, "cfg-0", &key, &[]);

    // A module of a name of its own (modules are cluster-scoped), the
    // Secret, and the bundle.
    let mut cleanup = crate::support::policy::Cleanup::new(&tb);
    let bundles = create_web_bundle(
        &tb,
        &client,
        &run,
        json!({ "greeting": "hello from the operator" }),
        &mut cleanup,
    )
    .await;

    // Rendered, stored, published: kubectl wait understands it.
    tb.kubectl_ok(&[
        "-n",
        &ns.name,
        "wait",
        "--for=condition=Published",
        "--timeout=60s",
        "configbundle/web",
    ]);
    let first = rendered(&bundles, "True").await;
    let first_ids = ids(&first);
    assert_eq!(first_ids.len(), 1, "{first_ids:?}");
    let id = first_ids[0].clone();
    assert!(id.starts_with("web-config--cfg."), "{id}");
    let status_json = serde_json::to_string(&first.status).unwrap();
    assert!(
        !status_json.contains(TOKEN),
        "a secret in the status: {status_json}"
    );
    assert_eq!(
        first.status.as_ref().unwrap().expanded_config["apiToken"],
        theseus::config::MASK
    );

    // Served and signed: the index verifies with the operator's key and
    // lists the package, whose bytes hold no secret.
    let base = format!("{}/config-repository", op.http);
    let get = |path: String| async move {
        let r = reqwest::get(path).await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.bytes().await.unwrap().to_vec()
    };
    let index_bytes = get(format!("{base}/index.json")).await;
    let sig = String::from_utf8(get(format!("{base}/index.json.sig")).await).unwrap();
    let key_parsed = theseus::pkg::index::parse_public_key(&public, "the test key").unwrap();
    theseus::pkg::index::verify(&index_bytes, sig.trim(), &[key_parsed], "the served index")
        .expect("the index is signed with the operator's key");
    let index = theseus::pkg::index::Index::parse(&index_bytes, "index").unwrap();
    assert!(index.packages.iter().any(|e| e.id.to_string() == id));
    let archive = get(format!("{base}/packages/{id}.tar.gz")).await;
    let tar = gunzip(&archive);
    assert!(
        !tar.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "the secret's value is in the archive"
    );
    let missing = reqwest::get(format!(
        "{base}/packages/web-config--cfg.0000000000000000.tar.gz"
    ))
    .await
    .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    // It activates from there, verified with the operator's public key.
    let root = dir.path().join("root");
    stdout_ok(
        theseus_command()
            .arg("pkg")
            .arg("--root")
            .arg(&root)
            .args(["activate", "--repo", &base, "--key", &public, &id]),
    );
    let conf = std::fs::read_to_string(root.join("current/etc/web/web.conf")).unwrap();
    assert_eq!(
        conf,
        "greeting = hello from the operator\nlisten = 127.0.0.1:8080\nenvironment = dev\n"
    );

    // A render that changes no byte writes nothing: a new generation with
    // the same output (a value given that equals its default) keeps the id,
    // and neither the package nor the index object is written again.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let index_rv = configmaps
        .get(INDEX_OBJECT)
        .await
        .unwrap()
        .metadata
        .resource_version;
    let package_rv = configmaps
        .get(&object_name(&id))
        .await
        .unwrap()
        .metadata
        .resource_version;
    let merge = |patch: serde_json::Value| {
        let bundles = bundles.clone();
        async move {
            bundles
                .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap()
        }
    };
    merge(json!({ "spec": { "values": { "port": 8080 } } })).await;
    let same = rendered(&bundles, "True").await;
    assert_eq!(ids(&same), first_ids, "same bytes, same id");
    assert_eq!(
        configmaps
            .get(INDEX_OBJECT)
            .await
            .unwrap()
            .metadata
            .resource_version,
        index_rv,
        "the index was written again"
    );
    assert_eq!(
        configmaps
            .get(&object_name(&id))
            .await
            .unwrap()
            .metadata
            .resource_version,
        package_rv
    );

    // A changed byte: a new id, and the index lists both (the old one is
    // what nodes still run).
    merge(json!({ "spec": { "values": { "greeting": "hello again" } } })).await;
    let changed = eventually(Duration::from_secs(60), "a new id", || async {
        let b = rendered(&bundles, "True").await;
        if ids(&b) != first_ids {
            Ok(b)
        } else {
            Err(format!("{:?}", ids(&b)))
        }
    })
    .await;
    let new_id = ids(&changed)[0].clone();
    let index_bytes = get(format!("{base}/index.json")).await;
    let index2 = theseus::pkg::index::Index::parse(&index_bytes, "index").unwrap();
    assert_eq!(index2.version, index.version + 1);
    for want in [&id, &new_id] {
        assert!(index2.packages.iter().any(|e| &e.id.to_string() == want));
    }

    // `theseus config diff` shows a change before it is applied: the ids
    // and the lines, nothing for a change of no byte, the problems of one
    // that does not render.
    let diff = |set: &str| {
        tb.command(crate::support::theseus())
            .args(["config", "diff", "web", "-n", &ns.name, "--set", set])
            .output()
            .unwrap()
    };
    let out = diff("greeting=hola");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("{new_id} → web-config--cfg.")),
        "{text}"
    );
    assert!(
        text.contains("-greeting = hello again\n+greeting = hola\n"),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "{text}");
    let out = diff("port=8080");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("{new_id}  unchanged")), "{text}");
    let out = diff("port=80");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("spec.values.port: 80 is outside 1024..65535"),
        "{text}"
    );
    assert_eq!(
        ids(&bundles.get("web").await.unwrap()),
        vec![new_id.clone()],
        "a diff changes nothing"
    );

    // Bad values: every problem at once, with its path; an immutable
    // parameter changed is refused; the last good packages stay.
    merge(json!({ "spec": { "values": { "port": "eighty", "colour": "red", "environment": "prod" } } }))
        .await;
    let bad = rendered(&bundles, "False").await;
    assert_problems(
        &bad,
        &[
            "spec.values.port",
            "spec.values.colour",
            "spec.values.environment",
        ],
    );
    assert_eq!(
        ids(&bad),
        vec![new_id.clone()],
        "the last good package stays"
    );

    // A secret parameter without its valuesFrom, and a Cluster that does
    // not exist: both named, with their paths.
    merge(json!({ "spec": {
        "values": { "port": null, "colour": null, "environment": null },
        "valuesFrom": null,
        "clusterRef": { "name": "nowhere" }
    } }))
    .await;
    let unsourced = rendered(&bundles, "False").await;
    assert_problems(
        &unsourced,
        &[
            "spec.valuesFrom: secret parameter apiToken is not set",
            "spec.clusterRef.name",
            "nowhere",
        ],
    );
    assert_eq!(ids(&unsourced), vec![new_id.clone()]);

    drop(cleanup);
    drop(op);
    ns.delete(&client).await;
}

/// The service of the rollout test: serves `www/` on `$PORT`, unless its
/// configuration (`current/etc/web/mode`) says `broken`: then it never
/// answers, and its health check fails.
const SERVE: &str = r#"#!/bin/sh
set -e
mode=$(cat "$THESEUS_ROOT/current/etc/web/mode")
if [ "$mode" = broken ]; then exec sleep 600; fi
cd "$(dirname "$0")/../www"
exec python3 -m http.server --bind 127.0.0.1 "${PORT:?}"
"#;

/// A signed repository of `cfgweb--1.0.0`, which requires `web-config`.
pub(crate) fn service_repository(
    dir: &std::path::Path,
) -> (crate::support::repo_server::RepoServer, String) {
    use std::os::unix::fs::PermissionsExt;
    let repo = dir.join("repo");
    let key_path = dir.join("repo.key");
    let public = keygen(&key_path);
    let src = crate::support::pkg::package_dir(
        dir,
        "cfgweb--1.0.0",
        &["web-config"],
        &[("bin/serve", SERVE), ("www/version", "1.0.0\n")],
    );
    let info = json!({
        "id": "cfgweb--1.0.0",
        "requires": ["web-config"],
        "service": {
            "start": ["bin/serve"],
            "stopTimeoutSeconds": 2,
            "healthCheck": { "http": "http://127.0.0.1:${PORT}/version", "timeoutSeconds": 2 }
        }
    });
    std::fs::write(src.join("pkginfo.json"), info.to_string()).unwrap();
    std::fs::set_permissions(
        src.join("bin/serve"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    theseus::pkg::build::build(&src, &repo.join("packages")).unwrap();
    let key = theseus::pkg::index::read_secret_key(&key_path).unwrap();
    theseus::pkg::index::write(
        &repo,
        theseus::pkg::index::WriteOptions {
            key: Some(&key),
            ..Default::default()
        },
    )
    .unwrap();
    let server = crate::support::repo_server::RepoServer::start(theseus_command(), &repo);
    (server, public)
}

/// Creates in the namespace `run` the module `web-TAG` ([`module`]), the
/// Secret `web` whose `api-token` is [`TOKEN`], and the bundle `web` of
/// that module with `values` and the token from the Secret; the module is
/// deleted with `cleanup` (cluster-scoped, it would outlive the namespace,
/// also when the test fails). Returns the namespace's bundles.
pub(crate) async fn create_web_bundle(
    tb: &crate::support::TestbedEnv,
    client: &kube::Client,
    run: &str,
    values: serde_json::Value,
    cleanup: &mut crate::support::policy::Cleanup,
) -> Api<ConfigBundle> {
    let module_name = format!("web-{}", &run[run.len() - 8..]);
    Api::<ConfigModule>::all(client.clone())
        .create(&PostParams::default(), &module(&module_name))
        .await
        .unwrap();
    cleanup.add("configmodule", &module_name);
    tb.kubectl_ok(&[
        "-n",
        run,
        "create",
        "secret",
        "generic",
        "web",
        &format!("--from-literal=api-token={TOKEN}"),
    ]);
    let bundles: Api<ConfigBundle> = Api::namespaced(client.clone(), run);
    let bundle: ConfigBundle = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1",
        "kind": "ConfigBundle",
        "metadata": { "name": "web", "labels": { RUN_LABEL: run } },
        "spec": {
            "package": "web-config",
            "modules": [{ "name": module_name, "version": "1" }],
            "values": values,
            "valuesFrom": [{ "parameter": "apiToken",
                             "secretKeyRef": { "name": "web", "key": "api-token" } }]
        }
    }))
    .unwrap();
    bundles
        .create(&PostParams::default(), &bundle)
        .await
        .unwrap();
    bundles
}

/// What the rollout tests share: a namespace, a signed repository of the
/// service (`cfgweb--1.0.0`), an operator signing its generated packages,
/// and agent trust flags for both repositories.
pub(crate) struct Rig {
    pub tb: crate::support::TestbedEnv,
    pub client: kube::Client,
    pub ns: TestNamespace,
    /// The namespace's name, also the run label's value.
    pub run: String,
    pub dir: tempfile::TempDir,
    pub server: crate::support::repo_server::RepoServer,
    pub repo_key: String,
    pub op: Operator,
    /// `OPERATOR/config-repository`.
    pub config_url: String,
    /// `--trusted-key`/`--allowed-repository` for both repositories.
    pub trust: Vec<String>,
}

impl Rig {
    /// Everything but agents and objects; `None` without a testbed.
    pub async fn start(prefix: &str, operator_args: &[&str]) -> Option<Rig> {
        let tb = with_crds()?;
        let client = tb.client().await;
        let ns = TestNamespace::create(&tb, &client, prefix).await;
        let run = ns.name.clone();
        let dir = tempfile::tempdir().unwrap();
        let (server, repo_key) = service_repository(dir.path());
        let op_key = dir.path().join("config.key");
        let op_public = keygen(&op_key);
        let op = operator(&tb, &ns.name, prefix, &op_key, operator_args);
        let config_url = format!("{}/config-repository", op.http);
        let trust = vec![
            "--trusted-key".into(),
            repo_key.clone(),
            "--allowed-repository".into(),
            server.url.clone(),
            "--trusted-key".into(),
            op_public,
            "--allowed-repository".into(),
            config_url.clone(),
        ];
        Some(Rig {
            tb,
            client,
            ns,
            run,
            dir,
            server,
            repo_key,
            op,
            config_url,
            trust,
        })
    }

    /// The last 8 characters of the run, for names of its own.
    pub fn tag(&self) -> &str {
        &self.run[self.run.len() - 8..]
    }

    /// The PackageRepository of the service, named after the run.
    pub async fn create_repository(&self) {
        let repo: theseus::api::PackageRepository = serde_json::from_value(json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageRepository",
            "metadata": { "name": self.run, "labels": { RUN_LABEL: self.run } },
            "spec": { "url": self.server.url, "publicKeys": [self.repo_key], "refreshIntervalSeconds": 10 }
        }))
        .unwrap();
        Api::<theseus::api::PackageRepository>::all(self.client.clone())
            .create(&PostParams::default(), &repo)
            .await
            .unwrap();
    }
}

/// Creates the bundle `name` of `module`, producing `package`.
async fn create_bundle(
    bundles: &Api<ConfigBundle>,
    run: &str,
    name: &str,
    package: &str,
    module: &str,
) {
    let bundle: ConfigBundle = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1",
        "kind": "ConfigBundle",
        "metadata": { "name": name, "labels": { RUN_LABEL: run } },
        "spec": { "package": package, "modules": [{ "name": module }] }
    }))
    .unwrap();
    bundles
        .create(&PostParams::default(), &bundle)
        .await
        .unwrap();
}

fn split_module(name: &str) -> ConfigModule {
    serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1",
        "kind": "ConfigModule",
        "metadata": { "name": name },
        "spec": {
            "version": "1",
            "parameters": {
                "mode": { "type": "string", "enum": ["ok", "broken"], "default": "ok" },
                "aValue": { "type": "integer", "default": 1 },
                "bValue": { "type": "integer", "default": 1 }
            },
            "templates": [
                { "path": "etc/web/mode", "content": "{{ mode }}\n" },
                { "path": "etc/web/a.conf", "content": "value = {{ aValue }}\n", "for": ["a"] },
                { "path": "etc/web/b.conf", "content": "value = {{ bValue }}\n", "for": ["b"] }
            ]
        }
    }))
    .unwrap()
}

/// Two PackageSets of the same service, for the nodes of role `a` and of
/// role `b`, take the bundle's common package and their role's: a value
/// of `b` switches only b's nodes; a configuration that breaks the service
/// is rolled back by the first node that tries it, and the set halts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_change_rolls_only_the_nodes_whose_config_changed_and_a_broken_one_rolls_back() {
    use crate::support::agents::Agent;
    use theseus::api::{NodeInstall, PackageRepository, PackageSet, conditions};

    let Some(rig) = Rig::start("cfgroll", &["--config-gc-grace-seconds", "3"]).await else {
        return;
    };
    let (tb, client, ns, run) = (&rig.tb, &rig.client, &rig.ns, &rig.run);
    let (config_url, trust) = (&rig.config_url, &rig.trust);
    let agents: Vec<(String, Agent)> = ["a", "a", "b", "b"]
        .iter()
        .enumerate()
        .map(|(i, role)| {
            let labels = format!("{RUN_LABEL}={run},role={role}");
            let tag = format!("{}-{role}{i}", &run[run.len() - 8..]);
            (role.to_string(), Agent::start(tb, &tag, &labels, trust))
        })
        .collect();

    let module_name = format!("split-{}", &run[run.len() - 8..]);
    let modules: Api<ConfigModule> = Api::all(client.clone());
    modules
        .create(&PostParams::default(), &split_module(&module_name))
        .await
        .unwrap();
    let mut cleanup = crate::support::policy::Cleanup::new(tb);
    cleanup.add("configmodule", &module_name);
    let bundles: Api<ConfigBundle> = Api::namespaced(client.clone(), &ns.name);
    create_bundle(&bundles, run, "web", "web-config", &module_name).await;
    rig.create_repository().await;
    let sets: Api<PackageSet> = Api::all(client.clone());
    for role in ["a", "b"] {
        let set = json!({
            "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
            "metadata": { "name": format!("{run}-{role}"), "labels": { RUN_LABEL: run } },
            "spec": {
                "repository": run,
                "packages": ["cfgweb--1.0.0"],
                "configBundles": [{ "namespace": ns.name, "name": "web", "service": role }],
                "nodeSelector": { "matchLabels": { RUN_LABEL: run, "role": role } },
                "strategy": { "maxUnavailable": 1, "failureThreshold": 1, "healthTimeoutSeconds": 5 }
            }
        });
        sets.create(
            &PostParams::default(),
            &serde_json::from_value(set).unwrap(),
        )
        .await
        .unwrap();
    }
    let wait_set = |role: &'static str, type_: &'static str, status: &'static str| {
        let (sets, name) = (sets.clone(), format!("{run}-{role}"));
        async move {
            eventually(
                Duration::from_secs(120),
                &format!("{name} {type_}={status}"),
                || async {
                    let set = sets.get(&name).await.map_err(|e| e.to_string())?;
                    let st = set.status.clone().unwrap_or_default();
                    let current = st.observed_generation == set.metadata.generation;
                    match conditions::find(&st.conditions, type_) {
                        Some(c) if current && c.status == status => Ok(st),
                        other => Err(format!("{other:?}")),
                    }
                },
            )
            .await
        }
    };
    let nodes: Api<NodeInstall> = Api::all(client.clone());
    let active = |node: String| {
        let nodes = nodes.clone();
        async move {
            let ni = nodes.get(&node).await.unwrap();
            let st = ni.status.unwrap_or_default();
            (st.active_hash, st.active)
        }
    };
    // Both sets roll out: each node runs the service with the common
    // package and its role's.
    let a0 = wait_set("a", "Available", "True").await;
    let b0 = wait_set("b", "Available", "True").await;
    let before: Vec<(String, Option<String>, Vec<String>)> = {
        let mut out = Vec::new();
        for (role, agent) in &agents {
            let (hash, ids) = active(agent.node.clone()).await;
            out.push((role.clone(), hash, ids));
        }
        out
    };
    for (role, hash, ids) in &before {
        let set_hash = if role == "a" {
            &a0.set_hash
        } else {
            &b0.set_hash
        };
        assert_eq!(hash, set_hash, "{role}: {ids:?}");
        assert!(
            ids.iter().any(|i| i.starts_with("web-config--cfg.")),
            "{ids:?}"
        );
        assert!(
            ids.iter()
                .any(|i| i.starts_with(&format!("web-config-{role}--cfg."))),
            "{ids:?}"
        );
        assert!(ids.contains(&"cfgweb--1.0.0".to_owned()), "{ids:?}");
    }
    for (role, agent) in &agents {
        let conf = std::fs::read_to_string(agent.root.join(format!("current/etc/web/{role}.conf")))
            .unwrap();
        assert_eq!(conf, "value = 1\n");
        assert_eq!(agent.service_version().await.unwrap(), "1.0.0");
    }

    // b's value: only b's package changes, so only b's nodes switch.
    let patch = json!({ "spec": { "values": { "bValue": 2 } } });
    bundles
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let b1 = eventually(
        Duration::from_secs(120),
        "set b on its new config",
        || async {
            let st = wait_set("b", "Available", "True").await;
            if st.set_hash != b0.set_hash && st.updated_nodes == 2 {
                Ok(st)
            } else {
                Err(format!("{:?} {}", st.set_hash, st.updated_nodes))
            }
        },
    )
    .await;
    let a1 = wait_set("a", "Available", "True").await;
    assert_eq!(a1.set_hash, a0.set_hash, "set a did not change");
    for ((role, agent), (_, hash, _)) in agents.iter().zip(&before) {
        let (now, _) = active(agent.node.clone()).await;
        if role == "a" {
            assert_eq!(
                &now, hash,
                "{} switched though its config did not change",
                agent.node
            );
        } else {
            assert_eq!(now, b1.set_hash, "{} is not on b's new set", agent.node);
            let conf = std::fs::read_to_string(agent.root.join("current/etc/web/b.conf")).unwrap();
            assert_eq!(conf, "value = 2\n");
        }
    }

    // A configuration that breaks the service: the first node of each set
    // fails its health check and rolls back; the sets halt.
    let patch = json!({ "spec": { "values": { "mode": "broken" } } });
    bundles
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let halted = wait_set("a", "Halted", "True").await;
    assert!(conditions::is_true(&halted.conditions, "Degraded"));
    wait_set("b", "Halted", "True").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut tried = 0;
    for (role, agent) in &agents {
        let ni = nodes.get(&agent.node).await.unwrap();
        let st = ni.status.clone().unwrap_or_default();
        let kept = if role == "a" {
            &a0.set_hash
        } else {
            &b1.set_hash
        };
        assert_eq!(
            st.active_hash.as_ref(),
            kept.as_ref(),
            "{} is not back",
            agent.node
        );
        if st.failed_hash.is_some() {
            tried += 1;
        }
        assert_eq!(
            agent.service_version().await.unwrap(),
            "1.0.0",
            "{}",
            agent.node
        );
    }
    assert_eq!(tried, 2, "one node of each set tried the broken config");

    // Collection: a bundle's package that nothing uses any more goes (a
    // deleted bundle's), while every package a node targets, runs or
    // keeps to roll back to stays — among them b's first configuration,
    // which only b's nodes' kept generation still holds.
    create_bundle(&bundles, run, "orphan", "orphan-config", &module_name).await;
    let orphan_ids = eventually(Duration::from_secs(60), "the orphan rendered", || async {
        let b = bundles.get("orphan").await.map_err(|e| e.to_string())?;
        let ids: Vec<String> = b
            .status
            .unwrap_or_default()
            .rendered
            .iter()
            .map(|r| r.package_id.clone())
            .collect();
        if ids.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(ids)
        }
    })
    .await;
    bundles.delete("orphan", &Default::default()).await.unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    for id in &orphan_ids {
        eventually(
            Duration::from_secs(60),
            &format!("{id} collected"),
            || async {
                match configmaps.get_opt(&object_name(id)).await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }
    let first_b: Vec<&String> = before
        .iter()
        .filter(|(role, _, _)| role == "b")
        .flat_map(|(_, _, ids)| ids.iter().filter(|i| i.starts_with("web-config-b--cfg.")))
        .collect();
    assert!(!first_b.is_empty());
    let mut in_use = std::collections::BTreeSet::new();
    for (_, agent) in &agents {
        let ni = nodes.get(&agent.node).await.unwrap();
        let st = ni.status.clone().unwrap_or_default();
        in_use.extend(st.active.into_iter().chain(st.cached));
        in_use.extend(ni.spec.target.map(|t| t.packages).unwrap_or_default());
    }
    for id in &first_b {
        assert!(
            in_use.contains(*id),
            "{id} is no node's kept generation: {in_use:?}"
        );
    }
    for id in in_use.iter().filter(|i| i.contains("--cfg.")) {
        assert!(
            configmaps
                .get_opt(&object_name(id))
                .await
                .unwrap()
                .is_some(),
            "{id} is in use and was collected"
        );
    }
    // The repository's index is rebuilt after the collection: it drops
    // the orphan's packages within moments of their ConfigMaps.
    eventually(
        Duration::from_secs(30),
        "the orphan out of the index",
        || async {
            let index = reqwest::get(format!("{config_url}/index.json"))
                .await
                .map_err(|e| e.to_string())?
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            let index =
                theseus::pkg::index::Index::parse(&index, "index").map_err(|e| e.to_string())?;
            match orphan_ids
                .iter()
                .find(|id| index.packages.iter().any(|e| &e.id.to_string() == *id))
            {
                Some(id) => Err(format!("{id} still indexed")),
                None => Ok(()),
            }
        },
    )
    .await;

    let names: Vec<String> = agents.iter().map(|(_, a)| a.node.clone()).collect();
    // Stopped first: a running agent would register its NodeInstall again.
    drop(agents);
    for name in &names {
        crate::support::agents::delete(&nodes, name).await;
    }
    for name in [format!("{run}-a"), format!("{run}-b")] {
        let _ = sets.delete(&name, &Default::default()).await;
    }
    let _ = Api::<PackageRepository>::all(client.clone())
        .delete(run, &Default::default())
        .await;
    drop(cleanup);
    let Rig { ns, op, client, .. } = rig;
    drop(op);
    ns.delete(&client).await;
}
