//! Table tests of the config generator.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::api::{ConfigBundleSpec, ConfigModuleSpec};

fn module(yaml: &str) -> ConfigModuleSpec {
    serde_yaml::from_str(yaml).expect("a module")
}

/// The web module: a port, a greeting, a secret token, an immutable
/// region, a calculation, a common file and one per service.
fn web() -> BTreeMap<String, ConfigModuleSpec> {
    let web = module(
        r#"
version: "1"
parameters:
  port: {type: integer, default: 8080, minimum: 1, maximum: 65535}
  greeting: {type: string, default: hello}
  token: {type: string, secret: true}
  region: {type: string, immutable: true, default: eu}
  tls: {type: boolean, default: false}
calculations:
  listen: '"0.0.0.0:" ~ port'
templates:
  - path: etc/web.conf
    content: "listen = {{ listen }}\ngreeting = {{ greeting }}\ntoken = {{ token }}\n"
  - path: etc/tls.conf
    when: tls
    content: "tls = on\n"
  - path: etc/api.conf
    mode: "0755"
    for: [api]
    content: "region = {{ region }}\n"
  - path: etc/cache.conf
    for: [cache]
    content: "{% if cluster is defined %}{% for h in cluster.hosts.cache %}peer = {{ h }}\n{% endfor %}{% endif %}"
validations:
  - rule: port != 22
    message: port 22 is the ssh port; pick another
    path: spec.values.port
"#,
    );
    BTreeMap::from([("web".to_owned(), web)])
}

fn bundle(values: Value) -> ConfigBundleSpec {
    serde_json::from_value(json!({
        "package": "web-config",
        "modules": [{ "name": "web", "version": "1" }],
        "values": values,
        "valuesFrom": [{ "parameter": "token", "secretKeyRef": { "name": "web", "key": "token" } }]
    }))
    .expect("a bundle")
}

fn ids(r: &Rendered) -> Vec<String> {
    r.packages.iter().map(|p| p.id.clone()).collect()
}

fn problems(result: Result<Rendered, Problems>) -> Vec<String> {
    result
        .expect_err("problems")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_same_output_bytes_give_the_same_id_every_time() {
    let a = render(&web(), &bundle(json!({})), None, None).unwrap();
    let b = render(&web(), &bundle(json!({})), None, None).unwrap();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(
        ids(&a)
            .iter()
            .map(|i| i.split("--").next().unwrap().to_owned())
            .collect::<Vec<_>>(),
        ["web-config", "web-config-api", "web-config-cache"]
    );
    // The id is the content's hash under a documented encoding (each
    // path, mode and content length-prefixed, big-endian): the digest of
    // one file `a`, mode 0644, bytes "x\n", as computed by hand with
    // Python's hashlib over that encoding.
    let files = BTreeMap::from([(
        "a".to_owned(),
        File {
            mode: 0o644,
            content: b"x\n".to_vec(),
        },
    )]);
    assert_eq!(
        render::content_digest(&files),
        "b2dac1092bfe9e1dade32c77d3f697dde9a3648126fdeb8ee9403a247cc507b0"
    );
    assert!(
        a.packages
            .iter()
            .all(|p| p.id.len() == p.id.find("--cfg.").unwrap() + 6 + 16)
    );
}

#[test]
fn a_value_that_changes_bytes_gives_a_new_id_and_one_that_does_not_keeps_it() {
    let before = render(&web(), &bundle(json!({})), None, None).unwrap();
    let greeting = render(&web(), &bundle(json!({ "greeting": "hi" })), None, None).unwrap();
    assert_ne!(
        ids(&before)[0],
        ids(&greeting)[0],
        "the common file changed"
    );
    assert_eq!(
        ids(&before)[1..],
        ids(&greeting)[1..],
        "the services' files did not"
    );
    // The default given explicitly: same bytes, same ids (no rollout), but
    // the inputs differ.
    let same = render(
        &web(),
        &bundle(json!({ "greeting": "hello", "port": 8080 })),
        None,
        None,
    )
    .unwrap();
    assert_eq!(ids(&before), ids(&same));
    assert_ne!(before.input_digest, same.input_digest);
    // A file that is not rendered (tls off) is not in the package.
    let tls = render(&web(), &bundle(json!({ "tls": true })), None, None).unwrap();
    assert!(tls.packages[0].files.contains_key("etc/tls.conf"));
    assert!(!before.packages[0].files.contains_key("etc/tls.conf"));
}

#[test]
fn an_edited_template_or_module_version_that_changes_bytes_gives_a_new_id() {
    let before = render(&web(), &bundle(json!({})), None, None).unwrap();
    let mut edited = web();
    edited.get_mut("web").unwrap().templates[2].content = "region = {{ region }} \n".into();
    let after = render(&edited, &bundle(json!({})), None, None).unwrap();
    assert_eq!(ids(&before)[0], ids(&after)[0]);
    assert_ne!(
        ids(&before)[1],
        ids(&after)[1],
        "only the api package changed"
    );
    let mut newer = web();
    newer.get_mut("web").unwrap().version = "2".into();
    let wrong = problems(render(&newer, &bundle(json!({})), None, None));
    assert_eq!(
        wrong,
        ["spec.modules[0].version: ConfigModule web is version 2, not 1"]
    );
}

#[test]
fn every_error_and_unset_parameter_is_reported_at_once_with_its_field_path() {
    let mut catalog = web();
    catalog
        .get_mut("web")
        .unwrap()
        .parameters
        .get_mut("greeting")
        .unwrap()
        .default = None;
    let mut b = bundle(json!({ "port": 22, "colour": "red", "tls": "yes" }));
    b.values_from.clear();
    b.modules
        .push(serde_json::from_value(json!({ "name": "missing" })).unwrap());
    let all = problems(render(&catalog, &b, None, None));
    for expected in [
        "spec.modules[1].name: ConfigModule missing does not exist",
        "spec.values.colour: no module of the bundle has this parameter",
        "spec.values.greeting: greeting is not set and has no default; set it",
        "spec.valuesFrom: secret parameter token is not set",
        "spec.values.tls: \"yes\" is not of type boolean",
        "spec.values.port: port 22 is the ssh port; pick another",
    ] {
        assert!(
            all.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {all:#?}"
        );
    }
}

#[test]
fn a_secret_never_reaches_a_file_or_the_expanded_view() {
    let r = render(&web(), &bundle(json!({})), None, None).unwrap();
    let conf = String::from_utf8(r.packages[0].files["etc/web.conf"].content.clone()).unwrap();
    assert!(conf.contains("token = ${secret:token}"), "{conf}");
    // The package says which secrets its node must resolve.
    assert_eq!(r.packages[0].secret_parameters(), ["token"]);
    assert_eq!(r.expanded["token"], MASK);
    assert_eq!(r.expanded["listen"], "0.0.0.0:8080");
    let plain = problems(render(
        &web(),
        &bundle(json!({ "token": "s3cr3t" })),
        None,
        None,
    ));
    assert!(
        plain
            .iter()
            .any(|p| p.starts_with("spec.values.token: token is secret")),
        "{plain:?}"
    );
    assert!(plain.iter().all(|p| !p.contains("s3cr3t")), "{plain:?}");
}

#[test]
fn an_immutable_parameter_change_is_refused_with_its_field_path() {
    let previous = BTreeMap::from([("region".to_owned(), json!("eu"))]);
    assert!(render(&web(), &bundle(json!({})), None, Some(&previous)).is_ok());
    let moved = problems(render(
        &web(),
        &bundle(json!({ "region": "us" })),
        None,
        Some(&previous),
    ));
    assert_eq!(
        moved,
        [r#"spec.values.region: region is immutable: it was "eu" and cannot become "us""#]
    );
}

#[test]
fn a_cluster_s_facts_reach_the_templates_of_its_services() {
    let facts = Facts {
        name: "analytics".into(),
        size: 3,
        hosts: BTreeMap::from([("cache".to_owned(), vec!["n-1".to_owned(), "n-2".to_owned()])]),
    };
    let r = render(&web(), &bundle(json!({})), Some(&facts), None).unwrap();
    let cache = r.packages.iter().find(|p| p.service == "cache").unwrap();
    assert_eq!(
        cache.files["etc/cache.conf"].content,
        b"peer = n-1\npeer = n-2\n"
    );
    assert_eq!(
        r.packages
            .iter()
            .find(|p| p.service == "api")
            .unwrap()
            .files["etc/api.conf"]
            .mode,
        0o755
    );
}

#[test]
fn a_calculation_cycle_or_a_bad_template_is_a_problem_at_its_path() {
    let mut catalog = web();
    let m = catalog.get_mut("web").unwrap();
    m.calculations.insert("a".into(), "b ~ 1".into());
    m.calculations.insert("b".into(), "a ~ 1".into());
    m.templates[0].content = "{% if %}".into();
    m.templates[1].path = "../escape".into();
    let all = problems(render(
        &catalog,
        &bundle(json!({ "tls": true })),
        None,
        None,
    ));
    for expected in [
        "ConfigModule web: spec.calculations.a: cannot be computed",
        "ConfigModule web: spec.calculations.b: cannot be computed",
        "ConfigModule web: spec.templates[0].content: syntax error",
        "ConfigModule web: spec.templates[1].path: must be a relative path",
    ] {
        assert!(
            all.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {all:#?}"
        );
    }
}
