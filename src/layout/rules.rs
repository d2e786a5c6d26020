//! Turns a resolved template's fields into the model's constraints, each
//! with its field path and value.

use crate::api::ClusterTemplateSpec;

use super::model::{Constraint, Model, Rule};

/// Adds every constraint of `template` that concerns the model's services
/// and classes. Rules about services the cluster does not run are left out.
pub fn add_all(model: &mut Model, template: &ClusterTemplateSpec) -> Result<(), String> {
    let size = &template.constraints.size;
    if let Some(min) = size.min {
        push(
            model,
            Rule::SizeMin(min.max(0) as u32),
            "spec.constraints.size.min",
            min.to_string(),
        );
    }
    if let Some(max) = size.max {
        push(
            model,
            Rule::SizeMax(max.max(0) as u32),
            "spec.constraints.size.max",
            max.to_string(),
        );
    }
    for s in 0..model.services.len() {
        service_rules(model, template, s)?;
    }
    layout_rules(model, template);
    capacity_rules(model);
    Ok(())
}

fn push(model: &mut Model, rule: Rule, path: impl Into<String>, value: String) {
    model.constraints.push(Constraint {
        rule,
        path: path.into(),
        value,
    });
}

fn service_rules(
    model: &mut Model,
    template: &ClusterTemplateSpec,
    s: usize,
) -> Result<(), String> {
    let name = model.services[s].name.clone();
    let base = format!("spec.constraints.services.{name}");
    let rules = template
        .constraints
        .services
        .get(&name)
        .cloned()
        .unwrap_or_default();
    let count = rules.count.clone().unwrap_or_default();
    match count.min {
        Some(n) => push(
            model,
            Rule::CountMin {
                s,
                n: n.max(0) as u32,
            },
            format!("{base}.count.min"),
            n.to_string(),
        ),
        None => push(
            model,
            Rule::CountMin { s, n: 1 },
            format!("{base}.count.min"),
            "1 (default)".into(),
        ),
    }
    if let Some(n) = count.max {
        push(
            model,
            Rule::CountMax {
                s,
                n: n.max(0) as u32,
            },
            format!("{base}.count.max"),
            n.to_string(),
        );
    }
    if let Some(ratio) = &rules.ratio {
        let of = match &ratio.of {
            None => None,
            // A base service the cluster does not run leaves the ratio moot.
            Some(o) => match model.service(o) {
                Some(i) => Some(i),
                None => {
                    classes_rule(model, &rules.node_classes, s, &base);
                    return Ok(());
                }
            },
        };
        let per = ratio.per_nodes.max(1) as u32;
        let of_text = ratio
            .of
            .as_ref()
            .map(|o| format!(" of {o}"))
            .unwrap_or_default();
        if let Some(n) = ratio.min {
            let value = format!("{n} per {per}{of_text}");
            push(
                model,
                Rule::RatioMin {
                    s,
                    of,
                    per,
                    n: n.max(0) as u32,
                },
                format!("{base}.ratio.min"),
                value,
            );
        }
        if let Some(n) = ratio.max {
            let value = format!("{n} per {per}{of_text}");
            push(
                model,
                Rule::RatioMax {
                    s,
                    of,
                    per,
                    n: n.max(0) as u32,
                },
                format!("{base}.ratio.max"),
                value,
            );
        }
    }
    classes_rule(model, &rules.node_classes, s, &base);
    Ok(())
}

fn classes_rule(model: &mut Model, names: &[String], s: usize, base: &str) {
    if names.is_empty() {
        return;
    }
    let allowed = (0..model.classes.len())
        .filter(|&c| names.contains(&model.classes[c].name))
        .collect();
    push(
        model,
        Rule::NodeClasses { s, allowed },
        format!("{base}.nodeClasses"),
        format!("[{}]", names.join(",")),
    );
}

fn layout_rules(model: &mut Model, template: &ClusterTemplateSpec) {
    let layout = &template.constraints.layout;
    for (kind, groups) in [
        ("mustCoexist", &layout.must_coexist),
        ("cantCoexist", &layout.cant_coexist),
    ] {
        for (i, group) in groups.iter().enumerate() {
            let mut members: Vec<usize> = group.iter().filter_map(|n| model.service(n)).collect();
            members.sort_unstable();
            members.dedup();
            if members.len() < 2 {
                continue;
            }
            let rule = if kind == "mustCoexist" {
                Rule::MustCoexist(members)
            } else {
                Rule::CantCoexist(members)
            };
            push(
                model,
                rule,
                format!("spec.constraints.layout.{kind}[{i}]"),
                format!("[{}]", group.join(",")),
            );
        }
    }
}

/// A capacity constraint for each class that limits a resource some
/// service uses.
fn capacity_rules(model: &mut Model) {
    for class in 0..model.classes.len() {
        let capacity = model.classes[class].capacity;
        let binding =
            (0..3).any(|r| capacity[r].is_some() && model.services.iter().any(|s| s.uses[r] > 0));
        if !binding {
            continue;
        }
        let spec = &model.classes[class];
        let value = ["cpu", "memory", "disk"]
            .iter()
            .zip(capacity)
            .filter_map(|(n, c)| c.map(|c| format!("{n}={}", show(n, c))))
            .collect::<Vec<_>>()
            .join(",");
        let path = format!("NodeClass/{} spec.capacity", spec.name);
        push(
            model,
            Rule::Capacity { class },
            path,
            format!("{{{value}}}"),
        );
    }
}

/// An amount as people read it: CPU in cores or millicores, bytes in Gi/Mi.
pub fn show(resource: &str, amount: u64) -> String {
    if resource == "cpu" {
        return if amount.is_multiple_of(1000) {
            (amount / 1000).to_string()
        } else {
            format!("{amount}m")
        };
    }
    for (unit, size) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if amount >= size && amount.is_multiple_of(size) {
            return format!("{}{unit}", amount / size);
        }
    }
    amount.to_string()
}
