//! The values stored in the tree: a group's config and a container's info.
//! Their JSON field names are snake_case because applications of the
//! original design read them that way (`instance_host`, `instance_port`…).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A group's config: `PREFIX/SERVICE/GROUP/config`, a JSON object of strings.
pub type GroupConfig = BTreeMap<String, String>;

/// Where one container of a group can be reached:
/// `PREFIX/SERVICE/GROUP/containers/CONTAINER/info`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// The address peers connect to (the pod IP).
    pub instance_host: String,
    /// The first port the container declares, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_port: Option<u16>,
    /// Every port the container declares.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// The container's name (the pod name).
    pub instance_name: String,
    /// The node the container runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// One declared port of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The port's name, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port inside the container.
    pub container_port: u16,
    /// The port peers connect to on `instance_host` (pods are reached
    /// directly, so it equals `container_port`).
    pub host_port: u16,
}

impl ContainerInfo {
    /// The JSON stored in etcd. Field order is fixed, so equal infos give
    /// equal bytes and the diff can compare values as text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The JSON stored for a group's config.
pub fn config_json(config: &GroupConfig) -> String {
    serde_json::to_string(config).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_info_uses_the_original_field_names() {
        let info = ContainerInfo {
            instance_host: "10.0.0.7".into(),
            instance_port: Some(8080),
            port_mappings: vec![PortMapping {
                name: Some("http".into()),
                container_port: 8080,
                host_port: 8080,
            }],
            instance_name: "web-0".into(),
            node_name: Some("kwok-node-0".into()),
        };
        let json: serde_json::Value = serde_json::from_str(&info.to_json()).unwrap();
        assert_eq!(json["instance_host"], "10.0.0.7");
        assert_eq!(json["instance_port"], 8080);
        assert_eq!(json["port_mappings"][0]["container_port"], 8080);
        assert_eq!(json["instance_name"], "web-0");
        assert_eq!(json["node_name"], "kwok-node-0");
        let back: ContainerInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, info);
    }
}
