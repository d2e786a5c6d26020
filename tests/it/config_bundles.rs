//! The ConfigBundle controller against the testbed: a real operator renders
//! a bundle into a package stored in the API server and served, signed, at
//! its `/config-repository/`; the package activates with `theseus pkg`
//! from there; a render that changes no byte writes nothing; a changed
//! value gives a new id; bad values are all reported with their paths
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
const TOKEN: &str = "s3cret-token-value-7f3a";

fn module(name: &str) -> ConfigModule {
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

fn ids(b: &ConfigBundle) -> Vec<String> {
    b.status
        .as_ref()
        .unwrap()
        .rendered
        .iter()
        .map(|r| r.package_id.clone())
        .collect()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
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
    let logs = test_logs(&run);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("config.key");
    let public = stdout_ok(
        theseus_command()
            .args(["repo", "keygen", "--out"])
            .arg(&key),
    )
    .trim()
    .to_owned();
    let op = Operator::start_with(
        &tb,
        &ns.name,
        &run,
        "cfg-0",
        &logs,
        &["--config-signing-key", key.to_str().unwrap()],
        &[],
    );

    // A module of a name of its own (modules are cluster-scoped), the
    // Secret, and the bundle.
    let module_name = format!("web-{}", &run[run.len() - 8..]);
    let modules: Api<ConfigModule> = Api::all(client.clone());
    modules
        .create(&PostParams::default(), &module(&module_name))
        .await
        .unwrap();
    tb.kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "secret",
        "generic",
        "web",
        &format!("--from-literal=api-token={TOKEN}"),
    ]);
    let bundles: Api<ConfigBundle> = Api::namespaced(client.clone(), &ns.name);
    let bundle: ConfigBundle = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1",
        "kind": "ConfigBundle",
        "metadata": { "name": "web", "labels": { RUN_LABEL: run } },
        "spec": {
            "package": "web-config",
            "modules": [{ "name": module_name, "version": "1" }],
            "values": { "greeting": "hello from the operator" },
            "valuesFrom": [{ "parameter": "apiToken",
                             "secretKeyRef": { "name": "web", "key": "api-token" } }]
        }
    }))
    .unwrap();
    bundles
        .create(&PostParams::default(), &bundle)
        .await
        .unwrap();

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

    // Bad values: every problem at once, with its path; an immutable
    // parameter changed is refused; the last good packages stay.
    merge(json!({ "spec": { "values": { "port": "eighty", "colour": "red", "environment": "prod" } } }))
        .await;
    let bad = rendered(&bundles, "False").await;
    let message = bad
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Rendered")
        .unwrap()
        .message
        .clone();
    for expected in [
        "spec.values.port",
        "spec.values.colour",
        "spec.values.environment",
    ] {
        assert!(
            message.contains(expected),
            "missing {expected} in: {message}"
        );
    }
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
    let message = unsourced
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Rendered")
        .unwrap()
        .message
        .clone();
    for expected in [
        "spec.valuesFrom: secret parameter apiToken is not set",
        "spec.clusterRef.name",
        "nowhere",
    ] {
        assert!(
            message.contains(expected),
            "missing {expected} in: {message}"
        );
    }
    assert_eq!(ids(&unsourced), vec![new_id.clone()]);

    modules
        .delete(&module_name, &Default::default())
        .await
        .unwrap();
    drop(op);
    ns.delete(&client).await;
}
