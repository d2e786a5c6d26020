//! Label selectors evaluated in memory, for matching NodeInstalls to sets.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`, with the API server's semantics: every
/// `matchLabels` pair and every `matchExpressions` requirement must hold; an
/// empty selector matches everything.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs_hold = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_hold = selector.match_expressions.iter().flatten().all(|req| {
        let value = labels.get(&req.key);
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // The API server rejects other operators; match nothing if one slips through.
            _ => false,
        }
    });
    pairs_hold && expressions_hold
}

/// The selector in the string form `kubectl get -l` accepts.
pub fn to_query(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for req in selector.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default().join(",");
        parts.push(match req.operator.as_str() {
            "In" => format!("{} in ({values})", req.key),
            "NotIn" => format!("{} notin ({values})", req.key),
            "Exists" => req.key.clone(),
            _ => format!("!{}", req.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| (*v).into()).collect()),
        }
    }

    #[test]
    fn selectors_match_like_the_api_server() {
        let web = labels(&[("role", "web"), ("zone", "a")]);
        let cases = [
            (
                "an empty selector matches everything",
                LabelSelector::default(),
                true,
            ),
            (
                "matching labels match",
                LabelSelector {
                    match_labels: Some(labels(&[("role", "web")])),
                    ..Default::default()
                },
                true,
            ),
            (
                "a differing label value does not match",
                LabelSelector {
                    match_labels: Some(labels(&[("role", "db")])),
                    ..Default::default()
                },
                false,
            ),
            (
                "In matches a listed value",
                LabelSelector {
                    match_expressions: Some(vec![requirement("zone", "In", &["a", "b"])]),
                    ..Default::default()
                },
                true,
            ),
            (
                "NotIn rejects a listed value",
                LabelSelector {
                    match_expressions: Some(vec![requirement("zone", "NotIn", &["a"])]),
                    ..Default::default()
                },
                false,
            ),
            (
                "NotIn matches a missing key",
                LabelSelector {
                    match_expressions: Some(vec![requirement("rack", "NotIn", &["1"])]),
                    ..Default::default()
                },
                true,
            ),
            (
                "Exists needs the key",
                LabelSelector {
                    match_expressions: Some(vec![requirement("rack", "Exists", &[])]),
                    ..Default::default()
                },
                false,
            ),
            (
                "DoesNotExist matches a missing key",
                LabelSelector {
                    match_expressions: Some(vec![requirement("rack", "DoesNotExist", &[])]),
                    ..Default::default()
                },
                true,
            ),
        ];
        for (name, selector, expected) in cases {
            assert_eq!(matches(&selector, &web), expected, "{name}");
        }
    }

    #[test]
    fn a_selector_renders_as_a_kubectl_query() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("role", "web")])),
            match_expressions: Some(vec![requirement("zone", "In", &["a", "b"])]),
        };
        assert_eq!(to_query(&selector), "role=web,zone in (a,b)");
    }
}
