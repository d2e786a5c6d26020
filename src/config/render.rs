//! Rendering: values and facts → calculations → validations → files →
//! packages named by the hash of their content.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::values::{self, Modules};
use super::{Facts, File, Package, Problem, Problems, Rendered, SECRET_REFERENCE};
use crate::api::{ConfigBundleSpec, ConfigModuleSpec, FileTemplate};

/// Renders `bundle` with the modules of `catalog` and the cluster's
/// `facts`; `previous` holds the values of the last render, for immutable
/// parameters. Every problem is reported at once.
pub fn render(
    catalog: &BTreeMap<String, ConfigModuleSpec>,
    bundle: &ConfigBundleSpec,
    facts: Option<&Facts>,
    previous: Option<&BTreeMap<String, Value>>,
) -> Result<Rendered, Problems> {
    let mut problems = Vec::new();
    let modules = values::modules(catalog, bundle, &mut problems);
    let parameters = values::parameters(&modules, &mut problems);
    let resolved = values::resolve(&parameters, bundle, previous, &mut problems);
    let env = environment();
    let mut context: BTreeMap<String, Value> = resolved.clone();
    if let Some(facts) = facts {
        context.insert(
            "cluster".into(),
            serde_json::to_value(facts).unwrap_or_default(),
        );
    }
    let calculated = calculate(&env, &modules, &mut context, &mut problems);
    validate(&env, &modules, &context, &mut problems);
    let files = files(&env, &modules, &context, &mut problems);
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let mut expanded = BTreeMap::new();
    for (name, value) in &resolved {
        let p = parameters.get(name.as_str()).map(|(_, p)| *p);
        expanded.insert(name.clone(), values::shown(p, value));
    }
    for name in calculated {
        let shown = values::shown(None, &context[&name]);
        let masked = shown.contains(SECRET_REFERENCE);
        expanded.insert(
            name,
            if masked {
                super::MASK.to_owned()
            } else {
                shown
            },
        );
    }
    let values = resolved
        .iter()
        .filter(|(name, _)| !parameters.get(name.as_str()).is_some_and(|(_, p)| p.secret))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    Ok(Rendered {
        packages: packages(&bundle.package, files),
        expanded,
        values,
        input_digest: input_digest(&modules, bundle, facts),
    })
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

fn eval(
    env: &Environment<'_>,
    expr: &str,
    context: &BTreeMap<String, Value>,
) -> Result<Value, String> {
    let compiled = env.compile_expression(expr).map_err(|e| e.to_string())?;
    let value = compiled
        .eval(minijinja::Value::from_serialize(context))
        .map_err(|e| e.to_string())?;
    serde_json::to_value(&value).map_err(|e| e.to_string())
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Evaluates every calculation into `context`, in whatever order their
/// inputs allow; returns their names. One that never can is a problem.
fn calculate(
    env: &Environment<'_>,
    modules: &Modules<'_>,
    context: &mut BTreeMap<String, Value>,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    let mut pending: Vec<(String, String, &str)> = Vec::new();
    for (module, spec) in modules {
        for (name, expr) in &spec.calculations {
            let path = format!("ConfigModule {module}: spec.calculations.{name}");
            if context.contains_key(name) || pending.iter().any(|(_, n, _)| n == name) {
                problems.push(Problem::new(
                    path,
                    format!("{name} is already a parameter or calculation; rename it"),
                ));
                continue;
            }
            pending.push((path, name.clone(), expr));
        }
    }
    let mut done = Vec::new();
    loop {
        let mut last_errors = Vec::new();
        let before = pending.len();
        pending.retain(|(path, name, expr)| match eval(env, expr, context) {
            Ok(value) => {
                context.insert(name.clone(), value);
                done.push(name.clone());
                false
            }
            Err(e) => {
                last_errors.push((path.clone(), e));
                true
            }
        });
        if pending.is_empty() || pending.len() == before {
            for (path, e) in last_errors {
                problems.push(Problem::new(path, format!("cannot be computed: {e}")));
            }
            return done;
        }
    }
}

/// Every module's validations against `context`.
fn validate(
    env: &Environment<'_>,
    modules: &Modules<'_>,
    context: &BTreeMap<String, Value>,
    problems: &mut Vec<Problem>,
) {
    for (module, spec) in modules {
        for (i, v) in spec.validations.iter().enumerate() {
            let own = format!("ConfigModule {module}: spec.validations[{i}]");
            match eval(env, &v.rule, context) {
                Ok(value) if truthy(&value) => {}
                Ok(_) => problems.push(Problem::new(
                    v.path.clone().unwrap_or(own),
                    v.message.clone(),
                )),
                Err(e) => problems.push(Problem::new(format!("{own}.rule"), e)),
            }
        }
    }
}

/// The rendered files, by service ("" for every node), then by path.
type Split = BTreeMap<String, BTreeMap<String, File>>;

fn files(
    env: &Environment<'_>,
    modules: &Modules<'_>,
    context: &BTreeMap<String, Value>,
    problems: &mut Vec<Problem>,
) -> Split {
    let mut out = Split::new();
    for (module, spec) in modules {
        for (i, t) in spec.templates.iter().enumerate() {
            let path = format!("ConfigModule {module}: spec.templates[{i}]");
            match render_one(env, t, context, &path) {
                Ok(Some(file)) => {
                    let services = if t.for_.is_empty() {
                        vec![String::new()]
                    } else {
                        t.for_.clone()
                    };
                    for service in services {
                        let split = out.entry(service).or_default();
                        if split.insert(t.path.clone(), file.clone()).is_some() {
                            problems.push(Problem::new(
                                format!("{path}.path"),
                                format!("{} is rendered by another template too", t.path),
                            ));
                        }
                    }
                }
                Ok(None) => {}
                Err(p) => problems.push(p),
            }
        }
    }
    out
}

fn render_one(
    env: &Environment<'_>,
    t: &FileTemplate,
    context: &BTreeMap<String, Value>,
    path: &str,
) -> Result<Option<File>, Problem> {
    if let Some(when) = &t.when {
        match eval(env, when, context) {
            Ok(v) if !truthy(&v) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(Problem::new(format!("{path}.when"), e)),
        }
    }
    let relative = std::path::Path::new(&t.path);
    let bad = relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        || t.path == "pkginfo.json";
    if bad {
        return Err(Problem::new(
            format!("{path}.path"),
            "must be a relative path inside the package, without `..`, and not pkginfo.json",
        ));
    }
    let mode = match t.mode.as_deref().map(|m| m.trim_start_matches('0')) {
        None | Some("644") => 0o644,
        Some("755") => 0o755,
        Some(_) => {
            return Err(Problem::new(
                format!("{path}.mode"),
                "a package holds files of mode 0644 or 0755 only",
            ));
        }
    };
    let content = env
        .render_str(&t.content, context)
        .map_err(|e| Problem::new(format!("{path}.content"), e.to_string()))?;
    Ok(Some(File {
        mode,
        content: content.into_bytes(),
    }))
}

/// The packages: `NAME` with the files for every node, and `NAME-SERVICE`
/// per service with its own files.
fn packages(name: &str, split: Split) -> Vec<Package> {
    let mut split = split;
    let common = split.remove("").unwrap_or_default();
    let mut out = Vec::new();
    if !common.is_empty() || split.is_empty() {
        out.push(package(name, String::new(), common));
    }
    for (service, files) in split {
        out.push(package(&format!("{name}-{service}"), service, files));
    }
    out
}

fn package(name: &str, service: String, files: BTreeMap<String, File>) -> Package {
    let digest = content_digest(&files);
    Package {
        service,
        id: format!("{name}--cfg.{}", &digest[..16]),
        content_digest: digest,
        files,
    }
}

/// The sha256 of each file's path, mode and bytes, in path order, each
/// field length-prefixed so no two different contents hash alike.
pub fn content_digest(files: &BTreeMap<String, File>) -> String {
    let mut h = Sha256::new();
    for (path, file) in files {
        h.update((path.len() as u64).to_be_bytes());
        h.update(path.as_bytes());
        h.update(file.mode.to_be_bytes());
        h.update((file.content.len() as u64).to_be_bytes());
        h.update(&file.content);
    }
    hex::encode(h.finalize())
}

fn input_digest(modules: &Modules<'_>, bundle: &ConfigBundleSpec, facts: Option<&Facts>) -> String {
    let inputs = serde_json::json!({ "modules": modules, "bundle": bundle, "facts": facts });
    hex::encode(Sha256::digest(
        serde_json::to_vec(&inputs).unwrap_or_default(),
    ))
}
