//! Templates end to end: resolution (parent, includes, immutable fields),
//! validation reasons with field paths, the examples' feasible sizes
//! against a solve at every size, `theseus template` on the examples, and
//! the examples accepted by the API server.

use std::process::Command;

use theseus::cli::template::add_documents;
use theseus::layout::{self, Catalog, Outcome, Reason, Request, resolve, sizes, validate};

use crate::support::layout::{catalog, examples};
use crate::support::{self, repo_root, theseus};

/// The fixture catalog plus more templates, as YAML documents.
fn with_templates(docs: &str) -> Catalog {
    let mut c = catalog("defaults: {services: [a]}");
    add_documents(&mut c, docs).unwrap();
    c
}

#[test]
fn a_template_starts_from_its_parent_then_its_includes_then_itself() {
    let c = with_templates(
        "kind: ClusterTemplate
metadata: {name: base}
spec:
  defaults: {services: [a], nodeClass: small}
  constraints: {size: {min: 2, max: 9}, services: {a: {count: {min: 2}}}}
---
kind: ClusterTemplate
metadata: {name: monitoring}
spec:
  partial: true
  defaults: {services: [monitor]}
  constraints: {services: {monitor: {ratio: {perNodes: 1, min: 1}}}}
---
kind: ClusterTemplate
metadata: {name: child}
spec:
  parent: base
  includes: [monitoring]
  defaults: {services: [b]}
  constraints: {size: {max: 20}, services: {a: {count: {max: 3}}}}",
    );
    let r = resolve::resolve(&c, "child").unwrap();
    assert_eq!(
        r.defaults.services,
        ["a", "monitor", "b"],
        "lists are joined in order"
    );
    assert_eq!(
        r.defaults.node_class.as_deref(),
        Some("small"),
        "kept from the parent"
    );
    assert_eq!(
        (r.constraints.size.min, r.constraints.size.max),
        (Some(2), Some(20)),
        "max overridden"
    );
    let a = r.constraints.services["a"].count.clone().unwrap();
    assert_eq!(
        (a.min, a.max),
        (None, Some(3)),
        "a service's count is replaced whole"
    );
    assert!(
        r.constraints.services["monitor"].ratio.is_some(),
        "the include's rules arrive"
    );
    assert_ne!(
        resolve::revision(&r),
        resolve::revision(&resolve::resolve(&c, "base").unwrap())
    );
}

#[test]
fn validation_names_the_reason_and_the_field_path() {
    let c = with_templates(
        "kind: ClusterTemplate
metadata: {name: locked}
spec:
  partial: true
  immutable: [constraints.services.a.count]
  constraints: {services: {a: {count: {min: 1, max: 1}}}}
---
kind: ClusterTemplate
metadata: {name: overrides-locked}
spec:
  includes: [locked]
  defaults: {services: [a]}
  constraints: {services: {a: {count: {max: 2}}}}
---
kind: ClusterTemplate
metadata: {name: loop-a}
spec: {parent: loop-b}
---
kind: ClusterTemplate
metadata: {name: loop-b}
spec: {parent: loop-a}
---
kind: ClusterTemplate
metadata: {name: orphan}
spec: {parent: nowhere}
---
kind: ServiceDefinition
metadata: {name: app}
spec: {dependencies: {runtime: {requires: [sql-database]}}}
---
kind: ServiceDefinition
metadata: {name: pg}
spec: {dependencies: {provides: [sql-database], conflicts: [my]}}
---
kind: ServiceDefinition
metadata: {name: my}
spec: {dependencies: {provides: [sql-database], install: {requires: [setup]}}}
---
kind: ServiceDefinition
metadata: {name: setup}
spec: {dependencies: {install: {requires: [my]}}}",
    );
    let resolve_err = |name: &str| resolve::resolve(&c, name).unwrap_err();
    let f = &resolve_err("overrides-locked")[0];
    assert_eq!(
        (f.reason, f.path.as_str()),
        (Reason::ImmutableField, "spec.constraints.services.a.count")
    );
    assert!(f.message.contains("locked"), "{f}");
    assert_eq!(resolve_err("loop-a")[0].reason, Reason::Cycle);
    assert!(
        resolve_err("loop-a")[0]
            .message
            .contains("loop-a -> loop-b -> loop-a")
    );
    assert_eq!(resolve_err("orphan")[0].reason, Reason::UnknownTemplate);

    let check = |spec: &str, reason: Reason, path: &str| {
        let c = catalog(spec);
        let mut c2 = c.clone();
        add_documents(&mut c2, "kind: ServiceDefinition\nmetadata: {name: app}\nspec: {dependencies: {runtime: {requires: [sql-database]}}}\n---\nkind: ServiceDefinition\nmetadata: {name: pg}\nspec: {dependencies: {provides: [sql-database], conflicts: [my]}}\n---\nkind: ServiceDefinition\nmetadata: {name: my}\nspec: {dependencies: {provides: [sql-database], install: {requires: [setup]}}}\n---\nkind: ServiceDefinition\nmetadata: {name: setup}\nspec: {dependencies: {install: {requires: [my]}}}").unwrap();
        let findings = validate::template(&c2, &resolve::resolve(&c2, "t").unwrap());
        assert!(
            findings
                .iter()
                .any(|f| f.reason == reason && f.path == path),
            "{spec}: expected {reason:?} at {path}: {findings:?}"
        );
    };
    check(
        "defaults: {services: [a, nosuch]}",
        Reason::UnknownService,
        "spec.defaults.services[1]",
    );
    check(
        "constraints: {layout: {cantCoexist: [[a, ghost]]}}",
        Reason::UnknownService,
        "spec.constraints.layout.cantCoexist[0][1]",
    );
    check(
        "defaults: {services: [a], nodeClass: huge}",
        Reason::UnknownNodeClass,
        "spec.defaults.nodeClass",
    );
    check(
        "defaults: {services: [a, app]}",
        Reason::MissingDependency,
        "spec.defaults.services[1]",
    );
    check(
        "defaults: {services: [app, pg, my]}",
        Reason::ConflictingServices,
        "spec.defaults.services[1]",
    );
    check(
        "defaults: {services: [my, setup]}",
        Reason::Cycle,
        "spec.defaults.services",
    );
    // Requirements met through `provides` are fine.
    let c = {
        let mut c = catalog("defaults: {services: [app, pg]}");
        add_documents(&mut c, "kind: ServiceDefinition\nmetadata: {name: app}\nspec: {dependencies: {runtime: {requires: [sql-database]}}}\n---\nkind: ServiceDefinition\nmetadata: {name: pg}\nspec: {dependencies: {provides: [sql-database]}}").unwrap();
        c
    };
    assert_eq!(
        validate::template(&c, &resolve::resolve(&c, "t").unwrap()),
        vec![]
    );
}

#[test]
fn each_example_has_a_layout_at_every_feasible_size_and_none_outside() {
    let c = examples();
    for (name, expected) in [
        ("hadoop", "4-500"),
        ("web", "5-6, 8-200"),
        ("mirrored-db", "2, 4, 6, 8, 10"),
    ] {
        let resolved = resolve::resolve(&c, name).unwrap();
        assert_eq!(validate::template(&c, &resolved), vec![], "{name} is valid");
        let model = layout::build_model(
            &c,
            &resolved,
            &Request {
                size: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let ranges = sizes::feasible_sizes(&model).unwrap();
        assert_eq!(sizes::format_ranges(&ranges).join(", "), expected, "{name}");
        let max = resolved.constraints.size.max.unwrap() as u32;
        for size in 1..=max + 1 {
            let outcome = layout::solve_request(
                &c,
                name,
                &Request {
                    size,
                    ..Default::default()
                },
                &[],
                name,
            )
            .unwrap();
            let feasible = ranges.iter().any(|&(a, b)| a <= size && size <= b);
            assert_eq!(
                matches!(outcome, Outcome::Solved { .. }),
                feasible,
                "{name} at size {size}"
            );
        }
    }
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(theseus())
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn template_solve_prints_the_examples_layouts_and_explanations() {
    let (code, out) = run(&[
        "template",
        "solve",
        "hadoop",
        "--size",
        "6",
        "-f",
        "examples/catalog/",
    ]);
    assert_eq!(code, 0, "{out}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("hadoop-")).collect();
    assert_eq!(rows.len(), 6, "{out}");
    let large: Vec<&&str> = rows
        .iter()
        .filter(|r| r.split_whitespace().nth(1) == Some("large"))
        .collect();
    assert_eq!(
        large.len(),
        1,
        "only the namenode needs a large node: {out}"
    );
    assert!(large[0].contains("namenode"), "{out}");
    assert!(
        rows.iter()
            .filter(|r| r.contains("datanode,nodemanager"))
            .count()
            >= 4,
        "{out}"
    );
    assert!(
        out.contains("6 nodes, total cost 8"),
        "one large (3) and five small (1): {out}"
    );

    let (code, out) = run(&[
        "template",
        "solve",
        "hadoop",
        "--size",
        "3",
        "-f",
        "examples/catalog/",
    ]);
    assert_eq!(code, 2, "{out}");
    for path in [
        "spec.constraints.services.namenode.count.min=1",
        "spec.constraints.services.datanode.count.min=3",
        "spec.constraints.layout.cantCoexist[0]=[namenode,datanode]",
        "cannot hold together at size 3",
    ] {
        assert!(out.contains(path), "the explanation lacks {path}: {out}");
    }

    let (code, out) = run(&[
        "template",
        "solve",
        "web",
        "--size",
        "12",
        "-f",
        "examples/catalog/",
        "-o",
        "yaml",
    ]);
    assert_eq!(code, 0, "{out}");
    let nodes: Vec<theseus::api::LayoutNode> =
        serde_yaml::from_str(out.split("12 nodes").next().unwrap()).unwrap();
    let count = |s: &str| {
        nodes
            .iter()
            .filter(|n| n.services.iter().any(|x| x == s))
            .count()
    };
    assert!(
        4 * count("cache") >= count("web"),
        "one cache per four web nodes: {out}"
    );
    assert_eq!(count("postgres"), 1);

    let (code, out) = run(&[
        "template",
        "validate",
        "mirrored-db",
        "-f",
        "examples/catalog/",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("feasible sizes: 2, 4, 6, 8, 10"), "{out}");
    let (code, out) = run(&[
        "template",
        "solve",
        "mirrored-db",
        "--size",
        "5",
        "-f",
        "examples/catalog/",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("spec.constraints.services.db-mirror.ratio.min=1 per 1 of db-primary"),
        "{out}"
    );
}

#[test]
fn the_example_catalog_is_accepted_by_the_api_server() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    let dir = repo_root().join("examples/catalog");
    tb.kubectl_ok(&["apply", "--dry-run=server", "-f", dir.to_str().unwrap()]);
}

#[test]
fn template_solve_reads_the_catalog_from_the_api_server_without_files() {
    let Some(tb) = support::with_crds() else {
        return;
    };
    // Names unique to this run: other tests share the API server.
    let id = format!("solve-{}", std::process::id());
    let manifest = format!(
        "apiVersion: theseus.dev/v1alpha1
kind: NodeClass
metadata: {{name: {id}-box}}
spec: {{provider: {{type: Local, local: {{}}}}, capacity: {{cpu: \"2\"}}}}
---
apiVersion: theseus.dev/v1alpha1
kind: ServiceDefinition
metadata: {{name: {id}-api}}
spec: {{resources: {{cpu: \"2\"}}}}
---
apiVersion: theseus.dev/v1alpha1
kind: ServiceDefinition
metadata: {{name: {id}-worker}}
spec: {{resources: {{cpu: 1}}}}
---
apiVersion: theseus.dev/v1alpha1
kind: ClusterTemplate
metadata: {{name: {id}}}
spec:
  compatibility: {{nodeClasses: [{id}-box]}}
  defaults: {{services: [{id}-api, {id}-worker]}}
  constraints: {{services: {{{id}-api: {{count: {{max: 1}}}}}}}}
"
    );
    let file = std::env::temp_dir().join(format!("{id}.yaml"));
    std::fs::write(&file, manifest).unwrap();
    let path = file.to_str().unwrap();
    tb.kubectl_ok(&["apply", "-f", path]);
    let out = tb
        .command(theseus())
        .args(["template", "solve", &id, "--size", "3"])
        .output()
        .unwrap();
    tb.kubectl_ok(&["delete", "-f", path]);
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The api service fills a 2-CPU node, so it runs alone; workers fill the rest.
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(&id)).collect();
    assert_eq!(rows.len(), 3, "{text}");
    let ending = |s: &str| rows.iter().filter(|r| r.ends_with(s)).count();
    assert_eq!(ending(&format!("{id}-api")), 1, "{text}");
    assert_eq!(ending(&format!("{id}-worker")), 2, "{text}");
}
