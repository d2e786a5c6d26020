//! The API against a real kube-apiserver, and the testbed's other real parts
//! (kwok nodes, moto's EC2 API). Run by `make test`, which brings the
//! testbed up first.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;
use theseus::api::conditions::{self, Observed, types};

use crate::support::{self, TestNamespace, eventually, repo_root};
use theseus::api::{
    NodeInstall, NodePool, PackageRepository, PackageSet, PackageSetStatus, ServiceGroup,
};

const KINDS: [&str; 5] = [
    "packagerepositories.theseus.dev",
    "packagesets.theseus.dev",
    "nodeinstalls.theseus.dev",
    "servicegroups.theseus.dev",
    "nodepools.theseus.dev",
];

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

#[tokio::test]
async fn crds_apply_list_explain_and_join_the_theseus_category() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let listed = tb.kubectl_ok(&["get", "crds", "-o", "name"]);
    for kind in KINDS {
        assert!(
            listed.contains(kind),
            "kubectl get crds lacks {kind}: {listed}"
        );
    }
    let explain = tb.kubectl_ok(&["explain", "packageset.spec.strategy"]);
    assert!(
        explain.contains("How many nodes may be unavailable"),
        "explain does not show the doc comments: {explain}"
    );
    assert!(explain.contains("maxUnavailable"), "{explain}");
    let out = tb.kubectl(&["get", "theseus", "--all-namespaces"]);
    assert!(
        out.status.success(),
        "kubectl get theseus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_example_passes_server_side_dry_run() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let examples = repo_root().join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        tb.kubectl_ok(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} examples found");
}

#[tokio::test]
async fn invalid_manifests_are_rejected_naming_the_field() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let dir = repo_root().join("tests/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let field = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no '# expect:' line", path.display()));
        let out = tb.kubectl(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", path.display());
        assert!(
            stderr.contains(field),
            "{}: the error does not name {field}: {stderr}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} invalid manifests found");
}

#[tokio::test]
async fn kubectl_scale_changes_a_nodepool_spec_replicas() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let client = tb.client().await;
    let name = unique("scale");
    let pools: Api<NodePool> = Api::all(client);
    let pool: NodePool = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "NodePool",
        "metadata": { "name": name },
        "spec": { "replicas": 1, "provider": { "type": "Local", "local": {} } }
    }))
    .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    tb.kubectl_ok(&["scale", &format!("nodepool/{name}"), "--replicas=3"]);
    let scaled = pools.get(&name).await.unwrap();
    assert_eq!(scaled.spec.replicas, 3);
    pools.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn one_object_of_each_kind_round_trips_through_kube_rs() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "roundtrip").await;
    let suffix = unique("rt");

    async fn round_trip<K>(api: Api<K>, path: &str, name: &str)
    where
        K: Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
        K::DynamicType: Default,
    {
        let text = std::fs::read_to_string(repo_root().join("examples").join(path)).unwrap();
        let mut object: K = serde_yaml::from_str(&text).unwrap();
        object.meta_mut().name = Some(name.to_owned());
        object.meta_mut().namespace = None;
        let created = api.create(&PostParams::default(), &object).await.unwrap();
        let read = api.get(name).await.unwrap();
        assert_eq!(created.meta().uid, read.meta().uid);
        let spec_of = |k: &K| serde_json::to_value(k).unwrap()["spec"].clone();
        assert_eq!(
            spec_of(&read),
            spec_of(&object),
            "{path}: spec changed on the way"
        );
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }

    round_trip(
        Api::<PackageRepository>::all(client.clone()),
        "packagerepository.yaml",
        &suffix,
    )
    .await;
    round_trip(
        Api::<PackageSet>::all(client.clone()),
        "packageset.yaml",
        &suffix,
    )
    .await;
    round_trip(
        Api::<NodeInstall>::all(client.clone()),
        "nodeinstall.yaml",
        &suffix,
    )
    .await;
    round_trip(
        Api::<NodePool>::all(client.clone()),
        "nodepool-aws.yaml",
        &suffix,
    )
    .await;
    round_trip(
        Api::<ServiceGroup>::namespaced(client.clone(), &ns.name),
        "servicegroup.yaml",
        &suffix,
    )
    .await;
    ns.delete(&client).await;
}

async fn write_available(api: &Api<PackageSet>, name: &str, available: bool) {
    let current = api.get_status(name).await.unwrap();
    let mut status: PackageSetStatus = current.status.unwrap_or_default();
    let reason = if available {
        "RolloutComplete"
    } else {
        "NodesUpdating"
    };
    conditions::set(
        &mut status.conditions,
        Observed::new(types::AVAILABLE, available, reason, "set by the test"),
        current.metadata.generation,
        Timestamp::now(),
    );
    let patch = json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn kubectl_wait_returns_only_once_available_is_true() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let client = tb.client().await;
    let name = unique("wait");
    let sets: Api<PackageSet> = Api::all(client.clone());
    let set: PackageSet = serde_json::from_value(json!({
        "apiVersion": "theseus.dev/v1alpha1", "kind": "PackageSet",
        "metadata": { "name": name },
        "spec": { "repository": "stable", "packages": ["demo-web--1.0.0"] }
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    write_available(&sets, &name, false).await;

    let mut wait = tb
        .kubectl_command(&[
            "wait",
            "--for=condition=Available",
            "--timeout=60s",
            &format!("packageset/{name}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        wait.try_wait().unwrap().is_none(),
        "kubectl wait returned while Available was False"
    );

    write_available(&sets, &name, true).await;
    let status = eventually(Duration::from_secs(20), "kubectl wait returns", || {
        let done = wait.try_wait().unwrap();
        async move { done.ok_or_else(|| "still waiting".to_owned()) }
    })
    .await;
    assert!(status.success(), "kubectl wait failed");
    sets.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn a_deployment_reaches_three_ready_pods_with_ips_on_kwok_nodes() {
    let Some(tb) = require_testbed!() else { return };
    let client: Client = tb.client().await;
    let ns = TestNamespace::create(&tb, &client, "kwok").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "example/web:1" }] }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let ready = eventually(Duration::from_secs(90), "3 ready pods with IPs", || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .map_err(|e| e.to_string())?;
            let ready: Vec<(String, String)> = list
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .filter_map(|p| {
                    let status = p.status.as_ref()?;
                    let node = p.spec.as_ref()?.node_name.clone()?;
                    Some((node, status.pod_ip.clone()?))
                })
                .collect();
            if ready.len() == 3 {
                Ok(ready)
            } else {
                Err(format!("{} ready: {ready:?}", ready.len()))
            }
        }
    })
    .await;
    for (node, ip) in &ready {
        assert!(node.starts_with("kwok-"), "pod on unexpected node {node}");
        assert!(
            ip.parse::<std::net::IpAddr>().is_ok(),
            "pod IP {ip} is not an address"
        );
    }
    ns.delete(&client).await;
}

#[tokio::test]
async fn run_and_describe_instances_round_trip_against_moto() {
    use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
    let Some(tb) = require_testbed!() else { return };
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(tb.var("AWS_REGION").to_owned()))
        .endpoint_url(tb.ec2_endpoint())
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            tb.var("AWS_ACCESS_KEY_ID"),
            tb.var("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "testbed",
        ))
        .load()
        .await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let images = ec2.describe_images().send().await.expect("DescribeImages");
    let image = images.images()[0].image_id().unwrap().to_owned();
    let marker = unique("roundtrip");
    let tag = Tag::builder()
        .key("theseus.dev/test")
        .value(&marker)
        .build();
    let run = ec2
        .run_instances()
        .image_id(&image)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(2)
        .max_count(2)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(tag)
                .build(),
        )
        .send()
        .await
        .expect("RunInstances");
    let mut launched: Vec<String> = run
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    launched.sort();
    assert_eq!(launched.len(), 2);

    let described = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:theseus.dev/test")
                .values(&marker)
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    let mut found: Vec<String> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    found.sort();
    assert_eq!(found, launched);
    ec2.terminate_instances()
        .set_instance_ids(Some(launched))
        .send()
        .await
        .expect("TerminateInstances");
}
