//! The key layout of the discovery tree (docs/architecture.md, "The etcd
//! discovery tree"), pure:
//!
//! ```text
//! PREFIX/SERVICE/.service                              marker written by create_service
//! PREFIX/SERVICE/GROUP/config                          JSON object: the group's config
//! PREFIX/SERVICE/GROUP/containers/CONTAINER/info       JSON: the container's info
//! ```
//!
//! etcd v3 has no directories: a "directory" is a key prefix that ends in
//! `/`, read and deleted as a range. Every prefix this module hands out ends
//! in `/`, so that `web/` never matches `web2/…`.

use thiserror::Error;

/// The default key prefix of the tree.
pub const DEFAULT_PREFIX: &str = "/services";
/// The group of a ServiceGroup without labels.
pub const DEFAULT_GROUP: &str = "default";
/// The longest group name: it must fit a Kubernetes label value.
pub const MAX_GROUP_LEN: usize = 63;
/// The key (under a service) that marks a service created without groups.
/// It starts with `.`, which no group name can.
pub const SERVICE_MARKER: &str = ".service";

/// A service, group or container name that cannot be part of the tree.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PathError {
    /// A group label outside `[a-z0-9-]`.
    #[error(
        "label {0:?} is not of lowercase letters, digits and hyphens; change the group's labels"
    )]
    InvalidLabel(String),
    /// A service name that is not a DNS label.
    #[error(
        "service name {0:?} is not a DNS label (lowercase letters, digits, inner hyphens, at most 63); rename the service"
    )]
    InvalidService(String),
    /// A group name that is not labels joined with `.`.
    #[error(
        "group {0:?} is not lowercase labels joined with '.' (at most 63 characters); pass the group's labels instead"
    )]
    InvalidGroup(String),
    /// A container name that is empty or contains `/`.
    #[error("container name {0:?} is empty or contains '/'; use the pod's name")]
    InvalidContainer(String),
}

/// Encodes a group's labels as its path element: lowercased, sorted,
/// de-duplicated and joined with `.`; no labels is [`DEFAULT_GROUP`].
pub fn encode_group<S: AsRef<str>>(labels: &[S]) -> Result<String, PathError> {
    let mut labels: Vec<String> = labels
        .iter()
        .map(|l| l.as_ref().trim().to_lowercase())
        .collect();
    if let Some(bad) = labels.iter().find(|l| !is_label(l)) {
        return Err(PathError::InvalidLabel(bad.clone()));
    }
    labels.sort();
    labels.dedup();
    if labels.is_empty() {
        return Ok(DEFAULT_GROUP.to_owned());
    }
    let group = labels.join(".");
    if group.len() > MAX_GROUP_LEN {
        return Err(PathError::InvalidGroup(group));
    }
    Ok(group)
}

/// The labels a group name stands for (`default` stands for none).
pub fn decode_group(group: &str) -> Vec<String> {
    if group == DEFAULT_GROUP {
        return Vec::new();
    }
    group.split('.').map(str::to_owned).collect()
}

fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks that `service` is a DNS label.
pub fn validate_service(service: &str) -> Result<(), PathError> {
    let ok = !service.is_empty()
        && service.len() <= 63
        && is_label(service)
        && !service.starts_with('-')
        && !service.ends_with('-');
    ok.then_some(())
        .ok_or_else(|| PathError::InvalidService(service.to_owned()))
}

/// Checks that `group` is an encoded label list.
pub fn validate_group(group: &str) -> Result<(), PathError> {
    let ok = group.len() <= MAX_GROUP_LEN && group.split('.').all(is_label);
    ok.then_some(())
        .ok_or_else(|| PathError::InvalidGroup(group.to_owned()))
}

/// Checks that `container` can be one path element.
pub fn validate_container(container: &str) -> Result<(), PathError> {
    let ok = !container.is_empty() && !container.contains('/');
    ok.then_some(())
        .ok_or_else(|| PathError::InvalidContainer(container.to_owned()))
}

/// What a key of the tree is, parsed back from its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// `PREFIX/SERVICE/.service`
    ServiceMarker {
        /// The service.
        service: String,
    },
    /// `PREFIX/SERVICE/GROUP/config`
    Config {
        /// The service.
        service: String,
        /// The encoded group.
        group: String,
    },
    /// `PREFIX/SERVICE/GROUP/containers/CONTAINER/info`
    Info {
        /// The service.
        service: String,
        /// The encoded group.
        group: String,
        /// The container's name.
        container: String,
    },
    /// Any other key under a service (written by hand or by an older tool).
    Other {
        /// The service.
        service: String,
        /// The group, when the key is under one.
        group: Option<String>,
    },
}

/// The key layout under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Default for Layout {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Layout {
    /// A layout under `prefix` (leading `/` added, trailing `/` removed).
    pub fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        };
        Self { prefix }
    }

    /// The prefix without its trailing `/`, e.g. `/services`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The range of every key of the tree: `PREFIX/`.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The range of one service: `PREFIX/SERVICE/`.
    pub fn service(&self, service: &str) -> String {
        format!("{}/{service}/", self.prefix)
    }

    /// The marker key of a service created without groups.
    pub fn service_marker(&self, service: &str) -> String {
        format!("{}/{service}/{SERVICE_MARKER}", self.prefix)
    }

    /// The range of one group: `PREFIX/SERVICE/GROUP/`.
    pub fn group(&self, service: &str, group: &str) -> String {
        format!("{}/{service}/{group}/", self.prefix)
    }

    /// The group's config key.
    pub fn config(&self, service: &str, group: &str) -> String {
        format!("{}/{service}/{group}/config", self.prefix)
    }

    /// The range of a group's containers.
    pub fn containers(&self, service: &str, group: &str) -> String {
        format!("{}/{service}/{group}/containers/", self.prefix)
    }

    /// A container's info key.
    pub fn info(&self, service: &str, group: &str, container: &str) -> String {
        format!(
            "{}/{service}/{group}/containers/{container}/info",
            self.prefix
        )
    }

    /// Parses a key of the tree; `None` for keys outside the prefix.
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.root())?;
        let parts: Vec<&str> = rest.split('/').collect();
        let owned = |s: &str| s.to_owned();
        match parts.as_slice() {
            [service, marker] if *marker == SERVICE_MARKER => Some(Key::ServiceMarker {
                service: owned(service),
            }),
            [service, group, "config"] => Some(Key::Config {
                service: owned(service),
                group: owned(group),
            }),
            [service, group, "containers", container, "info"] => Some(Key::Info {
                service: owned(service),
                group: owned(group),
                container: owned(container),
            }),
            [service] if !service.is_empty() => Some(Key::Other {
                service: owned(service),
                group: None,
            }),
            [service, group, ..] if !service.is_empty() => Some(Key::Other {
                service: owned(service),
                group: (!group.is_empty()).then(|| owned(group)),
            }),
            _ => None,
        }
    }

    /// The service and group of a group range (`PREFIX/SERVICE/GROUP/`),
    /// as [`Layout::group`] writes it.
    pub fn parse_group(&self, range: &str) -> Option<(String, String)> {
        let rest = range.strip_prefix(&self.root())?.strip_suffix('/')?;
        let (service, group) = rest.split_once('/')?;
        let valid = validate_service(service).is_ok() && validate_group(group).is_ok();
        valid.then(|| (service.to_owned(), group.to_owned()))
    }

    /// Turns a path a person typed (`web/canary`, `/services/web`, `/`)
    /// into the range it names, ending in `/`.
    pub fn dir(&self, path: &str) -> String {
        let path = path.trim();
        let inside = path
            .strip_prefix(&self.prefix)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .filter(|_| !self.prefix.is_empty())
            .unwrap_or(path)
            .trim_matches('/');
        if inside.is_empty() {
            self.root()
        } else {
            format!("{}{inside}/", self.root())
        }
    }
}

/// The entries directly under `dir` among `keys`, like `ls`: each distinct
/// next path element, with a trailing `/` when deeper keys exist under it.
pub fn children<'k>(keys: impl IntoIterator<Item = &'k str>, dir: &str) -> Vec<String> {
    let mut out: Vec<String> = keys
        .into_iter()
        .filter_map(|k| k.strip_prefix(dir))
        .filter(|rest| !rest.is_empty())
        .map(|rest| match rest.split_once('/') {
            Some((head, _)) => format!("{head}/"),
            None => rest.to_owned(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_encoding_follows_the_design() {
        let cases: [(&str, &[&str], Result<&str, PathError>); 6] = [
            ("no labels is the default group", &[], Ok("default")),
            ("labels are sorted", &["eu", "canary"], Ok("canary.eu")),
            ("duplicates are removed", &["eu", "eu", "a"], Ok("a.eu")),
            ("labels are lowercased", &["EU", "Canary"], Ok("canary.eu")),
            (
                "a dot in a label is rejected",
                &["a.b"],
                Err(PathError::InvalidLabel("a.b".into())),
            ),
            (
                "an empty label is rejected",
                &[""],
                Err(PathError::InvalidLabel(String::new())),
            ),
        ];
        for (name, labels, want) in cases {
            assert_eq!(encode_group(labels), want.map(str::to_owned), "{name}");
        }
    }

    #[test]
    fn a_group_longer_than_a_label_value_is_rejected() {
        let labels: Vec<String> = (0..10).map(|i| format!("label-number-{i}")).collect();
        assert!(matches!(
            encode_group(&labels),
            Err(PathError::InvalidGroup(_))
        ));
    }

    #[test]
    fn decoding_a_group_gives_back_its_labels() {
        assert_eq!(decode_group("canary.eu"), vec!["canary", "eu"]);
        assert!(decode_group("default").is_empty());
    }

    #[test]
    fn keys_follow_the_layout_and_parse_back() {
        let l = Layout::default();
        let info = l.info("web", "canary.eu", "web-1");
        assert_eq!(info, "/services/web/canary.eu/containers/web-1/info");
        let cases = [
            (
                info.clone(),
                Some(Key::Info {
                    service: "web".into(),
                    group: "canary.eu".into(),
                    container: "web-1".into(),
                }),
            ),
            (
                l.config("web", "default"),
                Some(Key::Config {
                    service: "web".into(),
                    group: "default".into(),
                }),
            ),
            (
                l.service_marker("web"),
                Some(Key::ServiceMarker {
                    service: "web".into(),
                }),
            ),
            (
                "/services/web/default/junk".into(),
                Some(Key::Other {
                    service: "web".into(),
                    group: Some("default".into()),
                }),
            ),
            ("/elsewhere/web/default/config".into(), None),
        ];
        for (key, want) in cases {
            assert_eq!(l.parse(&key), want, "{key}");
        }
    }

    #[test]
    fn a_group_range_parses_back_to_its_service_and_group() {
        let l = Layout::default();
        let range = l.group("web", "canary.eu");
        assert_eq!(
            l.parse_group(&range),
            Some(("web".into(), "canary.eu".into()))
        );
        assert_eq!(l.parse_group("/services/web/"), None);
        assert_eq!(l.parse_group("/services/web/a/b/"), None);
    }

    #[test]
    fn every_range_ends_in_a_slash_so_web_does_not_match_web2() {
        let l = Layout::new("services/");
        assert_eq!(l.root(), "/services/");
        assert_eq!(l.service("web"), "/services/web/");
        assert_eq!(l.group("web", "a"), "/services/web/a/");
        assert!(!"/services/web2/a/config".starts_with(&l.service("web")));
    }

    #[test]
    fn a_typed_path_becomes_a_range() {
        let l = Layout::default();
        let cases = [
            ("", "/services/"),
            ("/", "/services/"),
            ("web", "/services/web/"),
            ("/services/web/", "/services/web/"),
            (
                "web/canary.eu/containers",
                "/services/web/canary.eu/containers/",
            ),
            ("/servicesx", "/services/servicesx/"),
        ];
        for (typed, want) in cases {
            assert_eq!(l.dir(typed), want, "{typed}");
        }
    }

    #[test]
    fn children_lists_each_next_element_once_and_marks_directories() {
        let keys = [
            "/services/web/a/config",
            "/services/web/a/containers/x/info",
            "/services/web/b/config",
            "/services/db/default/config",
        ];
        assert_eq!(children(keys, "/services/"), vec!["db/", "web/"]);
        assert_eq!(
            children(keys, "/services/web/a/"),
            vec!["config", "containers/"]
        );
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_service("web-1").is_ok());
        assert!(validate_service("-web").is_err());
        assert!(validate_service("Web").is_err());
        assert!(validate_group("canary.eu").is_ok());
        assert!(validate_group("canary..eu").is_err());
        assert!(validate_container("web-0").is_ok());
        assert!(validate_container("a/b").is_err());
    }
}
