//! Forms generated from the CRD schemas: any Theseus object created or
//! edited from the dashboard (`/ui/edit/PLURAL`, `?name=` to edit). The
//! form follows the kind's `spec` schema: a text, number, checkbox or
//! list field per scalar (a select for an enum), a group per nested
//! object, and a YAML box where a field is a map or a list of objects.
//! The submission is applied as the user (server-side apply, field manager
//! `theseus-dashboard`); the API server's validation errors are shown next
//! to the field they name.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Dashboard;
use super::auth::Session;
use super::columns::{self, Kind};
use super::pages::{Button, Chrome, answer, api_error, page, refused};

/// How deep nested objects become groups; deeper ones are YAML.
const MAX_DEPTH: usize = 3;
/// The field manager of the dashboard's applies.
const MANAGER: &str = "theseus-dashboard";

/// A field of a generated form.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    /// One value.
    Scalar {
        path: String,
        label: String,
        help: String,
        required: bool,
        kind: Scalar,
        /// The enum's values, for a select.
        options: Vec<String>,
    },
    /// A nested object's fields.
    Group {
        path: String,
        label: String,
        help: String,
        fields: Vec<Field>,
    },
    /// A map, a list of objects, or anything deeper: YAML.
    Yaml {
        path: String,
        label: String,
        help: String,
    },
}

/// What a scalar field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    Text,
    Integer,
    Number,
    Boolean,
    /// A number or a string (`x-kubernetes-int-or-string`).
    IntOrString,
    /// A list of strings or numbers, comma-separated.
    List,
}

/// The `spec` schema of every kind, by plural.
fn spec_schemas() -> &'static BTreeMap<String, JSONSchemaProps> {
    static SCHEMAS: OnceLock<BTreeMap<String, JSONSchemaProps>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        crate::api::crds()
            .into_iter()
            .filter_map(|crd| {
                let version = crd.spec.versions.iter().find(|v| v.storage)?;
                let spec = version
                    .schema
                    .as_ref()?
                    .open_api_v3_schema
                    .as_ref()?
                    .properties
                    .as_ref()?
                    .get("spec")?
                    .clone();
                Some((crd.spec.names.plural.clone(), spec))
            })
            .collect()
    })
}

/// The form of a kind's spec.
pub fn form_of(plural: &str) -> Option<Vec<Field>> {
    spec_schemas()
        .get(plural)
        .map(|schema| fields(schema, "spec", 1))
}

fn fields(schema: &JSONSchemaProps, path: &str, depth: usize) -> Vec<Field> {
    let required = schema.required.clone().unwrap_or_default();
    schema
        .properties
        .iter()
        .flatten()
        .map(|(name, prop)| {
            field(
                name,
                prop,
                &format!("{path}.{name}"),
                depth,
                required.contains(name),
            )
        })
        .collect()
}

fn field(name: &str, prop: &JSONSchemaProps, path: &str, depth: usize, required: bool) -> Field {
    let help = prop
        .description
        .as_deref()
        .unwrap_or_default()
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .replace('\n', " ");
    let (path, label) = (path.to_owned(), name.to_owned());
    let scalar = |kind: Scalar| Field::Scalar {
        path: path.clone(),
        label: label.clone(),
        help: help.clone(),
        required,
        kind,
        options: prop
            .enum_
            .iter()
            .flatten()
            .filter_map(|v| v.0.as_str().map(str::to_owned))
            .collect(),
    };
    if prop.x_kubernetes_int_or_string == Some(true) {
        return scalar(Scalar::IntOrString);
    }
    match prop.type_.as_deref() {
        Some("string") => scalar(Scalar::Text),
        Some("integer") => scalar(Scalar::Integer),
        Some("number") => scalar(Scalar::Number),
        Some("boolean") => scalar(Scalar::Boolean),
        Some("array") => {
            let item = match &prop.items {
                Some(JSONSchemaPropsOrArray::Schema(item)) => item.type_.as_deref(),
                _ => None,
            };
            match item {
                Some("string" | "integer" | "number") => scalar(Scalar::List),
                _ => Field::Yaml { path, label, help },
            }
        }
        Some("object")
            if prop.properties.as_ref().is_some_and(|p| !p.is_empty())
                && depth < MAX_DEPTH
                && !matches!(
                    prop.additional_properties,
                    Some(JSONSchemaPropsOrBool::Schema(_))
                ) =>
        {
            Field::Group {
                fields: fields(prop, &path, depth + 1),
                path,
                label,
                help,
            }
        }
        _ => Field::Yaml { path, label, help },
    }
}

/// The element id of a field's error slot.
pub fn error_id(path: &str) -> String {
    format!("error-{}", path.replace('.', "-"))
}

fn escape(s: &str) -> String {
    askama::filters::escape(s, askama::filters::Html)
        .map(|e| e.to_string())
        .unwrap_or_default()
}

/// The value at a dotted path of `object`.
fn at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(object, |v, key| v.get(key))
}

/// The HTML of `fields`, filled in from `object` (an existing object, or
/// `Null`).
pub fn render(fields: &[Field], object: &Value) -> String {
    let mut out = String::new();
    for field in fields {
        render_field(field, object, &mut out);
    }
    out
}

fn render_field(field: &Field, object: &Value, out: &mut String) {
    match field {
        Field::Group {
            path,
            label,
            help,
            fields,
        } => {
            out.push_str(&format!(
                "<fieldset id=\"group-{}\"><legend title=\"{}\">{}</legend>",
                path.replace('.', "-"),
                escape(help),
                escape(label)
            ));
            for f in fields {
                render_field(f, object, out);
            }
            out.push_str("</fieldset>");
        }
        Field::Yaml { path, label, help } => {
            let value = at(object, path)
                .filter(|v| !v.is_null())
                .map(|v| serde_yaml::to_string(v).unwrap_or_default())
                .unwrap_or_default();
            out.push_str(&format!(
                "<label title=\"{h}\">{l} <textarea name=\"{p}\" rows=\"3\" class=\"mono\" placeholder=\"YAML\">{v}</textarea> <span id=\"{e}\" class=\"field-error\"></span></label>",
                h = escape(help),
                l = escape(label),
                p = escape(path),
                v = escape(&value),
                e = error_id(path)
            ));
        }
        Field::Scalar {
            path,
            label,
            help,
            required,
            kind,
            options,
        } => {
            let value = at(object, path);
            let text = match value {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| i.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            let star = if *required { " *" } else { "" };
            let input = if !options.is_empty() {
                let mut select = format!(
                    "<select name=\"{}\"><option value=\"\">—</option>",
                    escape(path)
                );
                for option in options {
                    let selected = if *option == text { " selected" } else { "" };
                    select.push_str(&format!(
                        "<option value=\"{o}\"{selected}>{o}</option>",
                        o = escape(option)
                    ));
                }
                select + "</select>"
            } else {
                match kind {
                    Scalar::Boolean => format!(
                        "<input type=\"checkbox\" name=\"{}\"{}>",
                        escape(path),
                        if value == Some(&Value::Bool(true)) {
                            " checked"
                        } else {
                            ""
                        }
                    ),
                    Scalar::Integer | Scalar::Number => format!(
                        "<input type=\"number\"{} name=\"{}\" value=\"{}\">",
                        if *kind == Scalar::Number {
                            " step=\"any\""
                        } else {
                            ""
                        },
                        escape(path),
                        escape(&text)
                    ),
                    Scalar::Text | Scalar::IntOrString | Scalar::List => format!(
                        "<input name=\"{}\" value=\"{}\"{}>",
                        escape(path),
                        escape(&text),
                        if *kind == Scalar::List {
                            " placeholder=\"a, b, c\""
                        } else {
                            ""
                        }
                    ),
                }
            };
            out.push_str(&format!(
                "<label title=\"{h}\">{l}{star} {input} <span id=\"{e}\" class=\"field-error\"></span></label>",
                h = escape(help),
                l = escape(label),
                e = error_id(path)
            ));
        }
    }
}

/// The spec a form submission describes, or the fields it cannot read
/// (path, why). Empty fields are left out, so that defaults apply.
pub fn parse(
    fields: &[Field],
    form: &BTreeMap<String, String>,
) -> Result<Value, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let spec = parse_group(fields, form, &mut errors);
    if errors.is_empty() {
        Ok(Value::Object(spec))
    } else {
        Err(errors)
    }
}

fn parse_group(
    fields: &[Field],
    form: &BTreeMap<String, String>,
    errors: &mut Vec<(String, String)>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for field in fields {
        let (path, label) = match field {
            Field::Scalar { path, label, .. }
            | Field::Group { path, label, .. }
            | Field::Yaml { path, label, .. } => (path, label),
        };
        let text = form.get(path).map(|t| t.trim()).unwrap_or_default();
        let value = match field {
            Field::Group { fields, .. } => {
                let group = parse_group(fields, form, errors);
                (!group.is_empty()).then_some(Value::Object(group))
            }
            Field::Yaml { .. } if text.is_empty() => None,
            Field::Yaml { .. } => match serde_yaml::from_str::<Value>(text) {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push((path.clone(), format!("{path}: not YAML: {e}")));
                    None
                }
            },
            Field::Scalar {
                kind: Scalar::Boolean,
                ..
            } => Some(Value::Bool(form.contains_key(path))),
            Field::Scalar { .. } if text.is_empty() => None,
            Field::Scalar { kind, .. } => match kind {
                Scalar::Integer => match text.parse::<i64>() {
                    Ok(n) => Some(json!(n)),
                    Err(_) => {
                        errors.push((
                            path.clone(),
                            format!("{path}: {text:?} is not a whole number"),
                        ));
                        None
                    }
                },
                Scalar::Number => match text.parse::<f64>() {
                    Ok(n) => Some(json!(n)),
                    Err(_) => {
                        errors.push((path.clone(), format!("{path}: {text:?} is not a number")));
                        None
                    }
                },
                Scalar::IntOrString => Some(
                    text.parse::<i64>()
                        .map(|n| json!(n))
                        .unwrap_or_else(|_| json!(text)),
                ),
                Scalar::List => Some(Value::Array(
                    text.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| {
                            s.parse::<i64>()
                                .map(|n| json!(n))
                                .unwrap_or_else(|_| json!(s))
                        })
                        .collect(),
                )),
                Scalar::Text | Scalar::Boolean => Some(json!(text)),
            },
        };
        if let Some(value) = value {
            out.insert(label.clone(), value);
        }
    }
    out
}

/// The validation message of the API server as out-of-band swaps into the
/// error slot of each field it names (`spec.size: …` into the slot of
/// `spec.size`), after the whole message.
pub fn field_errors(message: &str, paths: &[String]) -> String {
    let mut out = format!("<span class=\"refused\">{}</span>", escape(message));
    // Longest first: `spec.provider.aws.region` before `spec.provider`.
    let mut paths: Vec<&String> = paths.iter().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let mut claimed: Vec<(usize, usize)> = Vec::new();
    for path in paths {
        let Some(at) = message.find(&format!("{path}:")) else {
            continue;
        };
        if claimed.iter().any(|(s, e)| at >= *s && at < *e) {
            continue;
        }
        let rest = &message[at..];
        let end = rest.find(", spec.").map(|e| e + 1).unwrap_or(rest.len());
        claimed.push((at, at + end));
        out.push_str(&format!(
            "<template><span id=\"{}\" class=\"field-error\" hx-swap-oob=\"true\">{}</span></template>",
            error_id(path),
            escape(rest[..end].trim_end_matches([',', ']', ' ']))
        ));
    }
    out
}

/// Every path of `fields`, groups included.
pub fn paths(fields: &[Field]) -> Vec<String> {
    let mut out = Vec::new();
    for field in fields {
        match field {
            Field::Group { path, fields, .. } => {
                out.push(path.clone());
                out.extend(paths(fields));
            }
            Field::Scalar { path, .. } | Field::Yaml { path, .. } => out.push(path.clone()),
        }
    }
    out
}

#[derive(Template)]
#[template(path = "dashboard/edit.html")]
struct EditPage {
    chrome: Chrome,
    plural: String,
    kind: String,
    namespaced: bool,
    editing: bool,
    name: String,
    namespace: String,
    fields: String,
}

/// The query of the edit page: the object to edit, if any.
#[derive(Debug, Default, Deserialize)]
pub struct EditQuery {
    name: Option<String>,
    namespace: Option<String>,
}

fn api_of(session: &Session, kind: &Kind, namespace: &str) -> Api<DynamicObject> {
    if kind.namespaced {
        Api::namespaced_with(session.client.clone(), namespace, &kind.resource)
    } else {
        Api::all_with(session.client.clone(), &kind.resource)
    }
}

/// `GET /ui/edit/PLURAL[?name=NAME&namespace=NS]`: the form of a new
/// object of the kind, or of the object named, filled in.
pub async fn edit_form(
    State(_dashboard): State<Dashboard>,
    session: Session,
    Path(plural): Path<String>,
    Query(query): Query<EditQuery>,
) -> Response {
    let (Some(kind), Some(form)) = (columns::by_plural(&plural), form_of(&plural)) else {
        return super::pages::not_found(&session, &format!("There is no Theseus kind {plural}."));
    };
    let namespace = query.namespace.clone().unwrap_or_default();
    let object = match &query.name {
        Some(name) => match api_of(&session, kind, &namespace).get(name).await {
            Ok(object) => serde_json::to_value(object).unwrap_or_default(),
            Err(err) => return api_error(&session, &format!("{} {name}", kind.kind), &err),
        },
        None => Value::Null,
    };
    page(EditPage {
        chrome: Chrome::new(&session, None),
        kind: kind.kind.clone(),
        namespaced: kind.namespaced,
        editing: query.name.is_some(),
        name: query.name.clone().unwrap_or_default(),
        namespace,
        fields: render(&form, &object),
        plural,
    })
}

/// `POST /ui/edit/PLURAL`: applies the form's object as the user; the page
/// then goes to the object.
pub async fn apply(
    Path(plural): Path<String>,
    Button {
        session,
        fields,
        headers,
    }: Button,
) -> Response {
    let (Some(kind), Some(form)) = (columns::by_plural(&plural), form_of(&plural)) else {
        return answer(
            StatusCode::NOT_FOUND,
            "refused",
            &format!("There is no Theseus kind {plural}."),
        );
    };
    let name = fields
        .get("name")
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    let namespace = fields
        .get("namespace")
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    if name.is_empty() || (kind.namespaced && namespace.is_empty()) {
        let needs = if kind.namespaced {
            "a namespace and a name"
        } else {
            "a name"
        };
        return answer(
            StatusCode::BAD_REQUEST,
            "refused",
            &format!("A {} needs {needs}.", kind.kind),
        );
    }
    let spec = match parse(&form, &fields) {
        Ok(spec) => spec,
        Err(errors) => {
            let message = errors
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let paths: Vec<String> = errors.into_iter().map(|(p, _)| p).collect();
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(field_errors(&message, &paths)),
            )
                .into_response();
        }
    };
    let mut metadata = json!({ "name": name });
    if kind.namespaced {
        metadata["namespace"] = json!(namespace);
    }
    let object = json!({
        "apiVersion": kind.resource.api_version, "kind": kind.kind,
        "metadata": metadata, "spec": spec
    });
    let what = format!("apply {} {name}", kind.kind);
    match api_of(&session, kind, &namespace)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
    {
        Ok(_) => {
            let to = if kind.namespaced {
                format!("/ui/kinds/{plural}/{namespace}/{name}")
            } else {
                format!("/ui/kinds/{plural}/{name}")
            };
            (StatusCode::OK, [("hx-redirect", to)], "applied").into_response()
        }
        Err(kube::Error::Api(status)) if status.code == 422 => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html(field_errors(&status.message, &paths(&form))),
        )
            .into_response(),
        Err(err) => refused(&headers, &what, &err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_form_follows_the_kinds_schema() {
        let fields = form_of("nodeclasses").expect("NodeClass");
        let all = paths(&fields);
        for path in [
            "spec.cost",
            "spec.capacity.cpu",
            "spec.provider.type",
            "spec.provider.aws.region",
            "spec.nodeLabels",
        ] {
            assert!(all.contains(&path.to_owned()), "{path} in {all:?}");
        }
        let html = render(&fields, &Value::Null);
        assert!(
            html.contains(r#"<input type="number" name="spec.cost" value="">"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<select name="spec.provider.type">"#),
            "an enum is a select: {html}"
        );
        assert!(
            html.contains(r#"<textarea name="spec.nodeLabels""#),
            "a map is YAML: {html}"
        );
        assert!(
            html.contains(r#"id="error-spec-provider-aws-region""#),
            "{html}"
        );
        assert!(form_of("secrets").is_none());
    }

    #[test]
    fn an_existing_object_fills_its_form_and_a_submission_becomes_its_spec() {
        let fields = form_of("nodeclasses").unwrap();
        let object = json!({ "spec": {
            "cost": 3, "capacity": { "cpu": "4" }, "nodeLabels": { "tier": "db" },
            "provider": { "type": "Aws", "aws": { "region": "eu-west-1", "subnetIds": ["a", "b"] } }
        }});
        let html = render(&fields, &object);
        assert!(html.contains(r#"name="spec.cost" value="3""#), "{html}");
        assert!(
            html.contains(r#"name="spec.provider.aws.subnetIds" value="a, b""#),
            "{html}"
        );
        assert!(html.contains("tier: db"), "{html}");
        let spec = parse(
            &fields,
            &form(&[
                ("spec.cost", "3"),
                ("spec.capacity.cpu", "4"),
                ("spec.capacity.memory", "8Gi"),
                ("spec.nodeLabels", "tier: db"),
                ("spec.provider.type", "Aws"),
                ("spec.provider.aws.region", "eu-west-1"),
                ("spec.provider.aws.subnetIds", "a, b"),
                ("spec.provider.aws.keyName", ""),
            ]),
        )
        .unwrap();
        assert_eq!(spec["cost"], json!(3));
        assert_eq!(spec["capacity"], json!({ "cpu": 4, "memory": "8Gi" }));
        assert_eq!(spec["nodeLabels"], json!({ "tier": "db" }));
        assert_eq!(spec["provider"]["aws"]["subnetIds"], json!(["a", "b"]));
        assert!(
            spec["provider"]["aws"].get("keyName").is_none(),
            "empty is left out: {spec}"
        );
        let bad = parse(
            &fields,
            &form(&[("spec.cost", "cheap"), ("spec.nodeLabels", "[")]),
        )
        .unwrap_err();
        let bad_paths: Vec<&str> = bad.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(bad_paths, ["spec.cost", "spec.nodeLabels"]);
    }

    #[test]
    fn validation_errors_go_next_to_the_fields_they_name() {
        let message = r#"NodeClass.theseus.dev "x" is invalid: [spec.cost: Invalid value: -1: spec.cost in body should be greater than or equal to 0, spec.provider.aws.region: Required value]"#;
        let paths: Vec<String> = ["spec.cost", "spec.provider", "spec.provider.aws.region"]
            .map(str::to_owned)
            .to_vec();
        let html = field_errors(message, &paths);
        assert!(html.contains(r#"<span id="error-spec-cost" class="field-error" hx-swap-oob="true">spec.cost: Invalid value: -1: spec.cost in body should be greater than or equal to 0</span>"#), "{html}");
        assert!(
            html.contains(r#"id="error-spec-provider-aws-region""#),
            "{html}"
        );
        assert!(
            !html.contains(r#"id="error-spec-provider""#),
            "the longest path claims its error: {html}"
        );
        assert!(html.contains("&#34;x&#34;"), "escaped: {html}");
    }
}
