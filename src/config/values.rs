//! The modules a bundle names, and the value of every parameter: from the
//! bundle, a default, or a secret reference; checked against the
//! parameter's type and bounds.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{MASK, Problem, SECRET_REFERENCE};
use crate::api::{ConfigBundleSpec, ConfigModuleSpec, Parameter, ParameterType};

/// The modules of a bundle, in its order, with their names.
pub type Modules<'a> = Vec<(&'a str, &'a ConfigModuleSpec)>;

/// The bundle's modules, each present and of the version asked for, with
/// every module they require.
pub fn modules<'a>(
    catalog: &'a BTreeMap<String, ConfigModuleSpec>,
    bundle: &ConfigBundleSpec,
    problems: &mut Vec<Problem>,
) -> Modules<'a> {
    let mut out = Vec::new();
    for (i, m) in bundle.modules.iter().enumerate() {
        let path = format!("spec.modules[{i}]");
        let Some((name, module)) = catalog.get_key_value(&m.name) else {
            problems.push(Problem::new(
                format!("{path}.name"),
                format!(
                    "ConfigModule {} does not exist; create it or remove it from the bundle",
                    m.name
                ),
            ));
            continue;
        };
        if let Some(want) = m.version.as_ref().filter(|v| **v != module.version) {
            problems.push(Problem::new(
                format!("{path}.version"),
                format!(
                    "ConfigModule {} is version {}, not {want}",
                    m.name, module.version
                ),
            ));
        }
        out.push((name.as_str(), module));
    }
    for (name, module) in &out {
        for (j, required) in module.requires.iter().enumerate() {
            if !bundle.modules.iter().any(|m| &m.name == required) {
                problems.push(Problem::new(
                    format!("ConfigModule {name}: spec.requires[{j}]"),
                    format!("needs module {required}; add it to spec.modules"),
                ));
            }
        }
    }
    out
}

/// Every parameter of `modules` by name, with the module that declares
/// it first; a parameter declared differently by two modules is a problem.
pub fn parameters<'a>(
    modules: &Modules<'a>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<&'a str, (&'a str, &'a Parameter)> {
    let mut out: BTreeMap<&str, (&str, &Parameter)> = BTreeMap::new();
    for (module, spec) in modules {
        for (name, p) in &spec.parameters {
            match out.get(name.as_str()) {
                Some((first, q)) if *q != p => problems.push(Problem::new(
                    format!("ConfigModule {module}: spec.parameters.{name}"),
                    format!("also declared, differently, by module {first}; declare it once"),
                )),
                Some(_) => {}
                None => {
                    out.insert(name, (module, p));
                }
            }
        }
    }
    out
}

/// The value of every parameter, checked; secrets as references. Also
/// refuses values no module declares, and changes to immutable ones
/// against `previous` (the values the bundle last rendered with).
pub fn resolve(
    parameters: &BTreeMap<&str, (&str, &Parameter)>,
    bundle: &ConfigBundleSpec,
    previous: Option<&BTreeMap<String, Value>>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Value> {
    for name in bundle.values.keys() {
        if !parameters.contains_key(name.as_str()) {
            problems.push(Problem::new(
                format!("spec.values.{name}"),
                "no module of the bundle has this parameter",
            ));
        }
    }
    for (i, from) in bundle.values_from.iter().enumerate() {
        match parameters.get(from.parameter.as_str()) {
            Some((_, p)) if p.secret => {}
            Some(_) => problems.push(Problem::new(
                format!("spec.valuesFrom[{i}].parameter"),
                format!("{} is not secret; give it in spec.values", from.parameter),
            )),
            None => problems.push(Problem::new(
                format!("spec.valuesFrom[{i}].parameter"),
                "no module of the bundle has this parameter",
            )),
        }
    }
    let mut out = BTreeMap::new();
    for (name, (_, p)) in parameters {
        if let Some(value) = value_of(name, p, bundle, problems) {
            check_immutable(name, p, &value, previous, problems);
            out.insert((*name).to_owned(), value);
        }
    }
    out
}

fn value_of(
    name: &str,
    p: &Parameter,
    bundle: &ConfigBundleSpec,
    problems: &mut Vec<Problem>,
) -> Option<Value> {
    let path = format!("spec.values.{name}");
    if p.secret {
        if bundle.values.contains_key(name) {
            problems.push(Problem::new(
                path,
                format!("{name} is secret; give it with spec.valuesFrom (a Secret), never in spec.values"),
            ));
            return None;
        }
        if !bundle.values_from.iter().any(|f| f.parameter == name) {
            problems.push(Problem::new(
                "spec.valuesFrom",
                format!("secret parameter {name} is not set; add a valuesFrom entry for it"),
            ));
            return None;
        }
        return Some(Value::String(format!("{SECRET_REFERENCE}{name}}}")));
    }
    let Some(value) = bundle.values.get(name).or(p.default.as_ref()) else {
        problems.push(Problem::new(
            path,
            format!("{name} is not set and has no default; set it"),
        ));
        return None;
    };
    match check(p, value) {
        Ok(()) => Some(value.clone()),
        Err(why) => {
            problems.push(Problem::new(path, why));
            None
        }
    }
}

/// Whether `value` fits `p`'s type, enum, bounds and pattern.
fn check(p: &Parameter, value: &Value) -> Result<(), String> {
    let typed = match p.type_ {
        ParameterType::String => value.is_string(),
        ParameterType::Integer => value.is_i64(),
        ParameterType::Boolean => value.is_boolean(),
    };
    if !typed {
        return Err(format!("{value} is not of type {:?}", p.type_).to_lowercase());
    }
    if !p.enum_.is_empty() && !p.enum_.contains(value) {
        let allowed: Vec<String> = p.enum_.iter().map(ToString::to_string).collect();
        return Err(format!("{value} is not one of {}", allowed.join(", ")));
    }
    if let Some(n) = value.as_i64()
        && (p.minimum.is_some_and(|min| n < min) || p.maximum.is_some_and(|max| n > max))
    {
        return Err(format!(
            "{n} is outside {}..{}",
            p.minimum.map_or(String::new(), |m| m.to_string()),
            p.maximum.map_or(String::new(), |m| m.to_string())
        ));
    }
    if let (Some(pattern), Some(s)) = (&p.pattern, value.as_str()) {
        let re = regex::Regex::new(pattern).map_err(|e| format!("the pattern is invalid: {e}"))?;
        if !re.is_match(s) {
            return Err(format!("{s:?} does not match {pattern}"));
        }
    }
    Ok(())
}

fn check_immutable(
    name: &str,
    p: &Parameter,
    value: &Value,
    previous: Option<&BTreeMap<String, Value>>,
    problems: &mut Vec<Problem>,
) {
    let Some(before) = previous.and_then(|v| v.get(name)) else {
        return;
    };
    if p.immutable && before != value {
        problems.push(Problem::new(
            format!("spec.values.{name}"),
            format!("{name} is immutable: it was {before} and cannot become {value}"),
        ));
    }
}

/// `value` as the expanded view shows it.
pub fn shown(p: Option<&Parameter>, value: &Value) -> String {
    match (p.is_some_and(|p| p.secret), value) {
        (true, _) => MASK.to_owned(),
        (false, Value::String(s)) => s.clone(),
        (false, other) => other.to_string(),
    }
}
