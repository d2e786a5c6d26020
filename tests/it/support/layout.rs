//! Fixtures and checks shared by the layout tests.

use theseus::api::LayoutNode;
use theseus::cli::template::add_documents;
use theseus::layout::{Catalog, Model, Outcome, Request, exhaustive, explain, resolve};

/// Node classes small (cost 1), spare (like small, cost 1) and large (cost
/// 3), and services with small resources, two heavy ones (3 CPUs: two do
/// not fit a small node) and a giant one no class holds.
pub const CATALOG: &str = r#"
kind: NodeClass
metadata: {name: small}
spec: {provider: {type: Local, local: {}}, capacity: {cpu: "4", memory: 8Gi}, cost: 1}
---
kind: NodeClass
metadata: {name: large}
spec: {provider: {type: Local, local: {}}, capacity: {cpu: "16", memory: 64Gi}, cost: 3}
---
kind: NodeClass
metadata: {name: spare}
spec: {provider: {type: Local, local: {}}, capacity: {cpu: "4", memory: 8Gi}, cost: 1}
"#;

const SERVICES: &[(&str, &str)] = &[
    ("a", "{cpu: 500m, memory: 1Gi}"),
    ("b", "{cpu: 500m, memory: 1Gi}"),
    ("c", "{cpu: 500m, memory: 1Gi}"),
    ("monitor", "{cpu: 100m}"),
    ("web", "{cpu: 1, memory: 2Gi}"),
    ("cache", "{cpu: 500m, memory: 2Gi}"),
    ("namenode", "{cpu: 1, memory: 4Gi}"),
    ("datanode", "{cpu: 1, memory: 1Gi}"),
    ("nodemanager", "{cpu: 1, memory: 1Gi}"),
    ("heavy", "{cpu: 3}"),
    ("heavy2", "{cpu: 3}"),
    ("giant", "{cpu: 32}"),
];

/// The fixture catalog with template `t` whose spec is `spec` (YAML).
pub fn catalog(spec: &str) -> Catalog {
    let mut text = CATALOG.to_owned();
    for (name, resources) in SERVICES {
        text += &format!(
            "---\nkind: ServiceDefinition\nmetadata: {{name: {name}}}\nspec: {{resources: {resources}}}\n"
        );
    }
    let spec: String = dedent(spec).lines().map(|l| format!("  {l}\n")).collect();
    text += &format!("---\nkind: ClusterTemplate\nmetadata: {{name: t}}\nspec:\n{spec}");
    let mut catalog = Catalog::default();
    add_documents(&mut catalog, &text)
        .unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{text}"));
    catalog
}

/// `text` without the indentation its lines after the first share (the
/// first starts right after the opening quote).
pub fn dedent(text: &str) -> String {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let rest: Vec<&str> = lines.collect();
    let indent = rest
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    std::iter::once(first)
        .chain(rest.iter().map(|l| l.get(indent..).unwrap_or("")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The model of `request` against template `t`.
pub fn model_for(catalog: &Catalog, request: &Request) -> Model {
    let resolved = resolve::resolve(catalog, "t").expect("the fixture template resolves");
    theseus::layout::build_model(catalog, &resolved, request).expect("the fixture request builds")
}

/// What a case expects.
pub enum Expect {
    /// A layout; the named services run on exactly these many nodes.
    Counts(&'static [(&'static str, u32)]),
    /// A layout with exactly these many nodes per class.
    Classes(&'static [(&'static str, u32)]),
    /// No layout; the explanation names exactly these paths, in order.
    Unsat(&'static [&'static str]),
}

/// Nodes per service name.
pub fn count(layout: &[LayoutNode], service: &str) -> u32 {
    layout
        .iter()
        .filter(|n| n.services.iter().any(|s| s == service))
        .count() as u32
}

/// Checks an outcome: a layout keeps every rule (independent checker) and
/// meets the expectation; an explanation names the expected paths and is
/// minimal.
pub fn check(name: &str, model: &Model, outcome: &Outcome, expect: &Expect) {
    match (outcome, expect) {
        (Outcome::Solved { layout, .. }, Expect::Counts(counts)) => {
            assert!(
                exhaustive::layout_ok(model, layout),
                "{name}: the layout breaks a rule: {layout:#?}"
            );
            for (service, n) in *counts {
                assert_eq!(
                    count(layout, service),
                    *n,
                    "{name}: nodes running {service}: {layout:#?}"
                );
            }
        }
        (Outcome::Solved { layout, .. }, Expect::Classes(classes)) => {
            assert!(
                exhaustive::layout_ok(model, layout),
                "{name}: the layout breaks a rule: {layout:#?}"
            );
            for (class, n) in *classes {
                let got = layout.iter().filter(|l| l.node_class == *class).count() as u32;
                assert_eq!(got, *n, "{name}: nodes of class {class}: {layout:#?}");
            }
        }
        (Outcome::Unsatisfiable(e), Expect::Unsat(paths)) => {
            let got: Vec<&str> = e.conflicts.iter().map(|c| c.path.as_str()).collect();
            assert_eq!(got, *paths, "{name}: {e}");
            assert_minimal(name, model);
        }
        (Outcome::Solved { layout, .. }, Expect::Unsat(_)) => {
            panic!("{name}: expected no layout, got {layout:#?}")
        }
        (Outcome::Unsatisfiable(e), _) => panic!("{name}: expected a layout, got: {e}"),
    }
}

/// The explanation's constraints cannot hold together, and dropping any one
/// of them makes the request solvable.
pub fn assert_minimal(name: &str, model: &Model) {
    let conflict = explain::minimal_conflict(model);
    let mut only = vec![false; model.constraints.len()];
    conflict.iter().for_each(|&i| only[i] = true);
    assert_eq!(
        explain::feasible(model, &only),
        Some(false),
        "{name}: the conflict alone is solvable"
    );
    for &i in &conflict {
        only[i] = false;
        assert_eq!(
            explain::feasible(model, &only),
            Some(true),
            "{name}: without {} the rest of the conflict is still unsolvable",
            model.constraints[i].path
        );
        only[i] = true;
    }
}

/// The catalog of `examples/catalog/`.
pub fn examples() -> Catalog {
    let mut catalog = Catalog::default();
    for entry in std::fs::read_dir(crate::support::repo_root().join("examples/catalog")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        add_documents(&mut catalog, &text).unwrap();
    }
    catalog
}
