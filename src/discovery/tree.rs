//! The discovery tree over etcd v3: the operations of the original driver
//! (create/remove service and group, exists checks, listings, config and
//! container info, register/deregister) with prefix ranges and
//! transactions instead of v2 directories.
//!
//! Every request has a timeout and is retried with exponential backoff
//! while etcd is unreachable; after the last attempt the error names the
//! endpoints and what to check. Nothing here panics on I/O.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use thiserror::Error;

use super::config::EtcdConfig;
use super::model::{ContainerInfo, GroupConfig, config_json};
use super::paths::{self, Key, Layout, PathError};

mod connect;
mod kv;
mod retry;

pub use kv::{Entry, Range, prefix_end};
pub use retry::is_transient;

async fn connect_client(config: &EtcdConfig, pings: bool) -> Result<Client, TreeError> {
    let options = connect::options(config, pings)?;
    let endpoints = config.endpoints.clone();
    retry::with_backoff(config, "connect", || {
        Client::connect(endpoints.clone(), Some(options.clone()))
    })
    .await
}

/// Keys read per range request, so a large tree never exceeds gRPC's
/// message limit.
const PAGE: i64 = 1000;

/// What went wrong talking to the discovery etcd.
#[derive(Debug, Error)]
pub enum TreeError {
    /// etcd did not answer, even after retries.
    #[error(
        "discovery etcd at {endpoints} is unreachable ({what}, {attempts} attempts): {last}; check --discovery-etcd and that etcd is running"
    )]
    Unavailable {
        /// The endpoints tried.
        endpoints: String,
        /// The operation.
        what: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// etcd answered with an error that retrying will not fix.
    #[error(
        "discovery etcd at {endpoints} refused {what}: {source}; check the etcd user, password, TLS options and prefix"
    )]
    Rejected {
        /// The endpoints.
        endpoints: String,
        /// The operation.
        what: String,
        /// etcd's answer.
        #[source]
        source: etcd_client::Error,
    },
    /// The connection options are unusable.
    #[error("cannot set up the discovery etcd client: {0}")]
    Setup(String),
    /// A name that cannot be part of the tree.
    #[error(transparent)]
    Path(#[from] PathError),
    /// `create_group` found the group already there.
    #[error("group {service}/{group} already exists; use set_group_config to change its config")]
    GroupExists {
        /// The service.
        service: String,
        /// The group.
        group: String,
    },
    /// `register_container` found no group to register into.
    #[error(
        "group {service}/{group} does not exist; create the group before registering containers"
    )]
    GroupMissing {
        /// The service.
        service: String,
        /// The group.
        group: String,
    },
    /// `register_container` found the container already registered.
    #[error(
        "container {container} of {service}/{group} is already registered; use set_container_info to update it"
    )]
    ContainerExists {
        /// The service.
        service: String,
        /// The group.
        group: String,
        /// The container.
        container: String,
    },
    /// A key holds something that is not the JSON this tree stores.
    #[error("key {key} does not hold valid JSON ({source}); fix or delete the key")]
    BadValue {
        /// The key.
        key: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// A container found under a service: its group, name and info.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEntry {
    /// The encoded group.
    pub group: String,
    /// The container's name.
    pub container: String,
    /// Its info.
    pub info: ContainerInfo,
}

/// The discovery tree in one etcd (cluster). Cheap to clone.
#[derive(Clone)]
pub struct Tree {
    client: Client,
    layout: Layout,
    config: EtcdConfig,
}

impl Tree {
    /// Connects to the discovery etcd. With a user, this authenticates and
    /// so needs etcd to answer (retried with backoff); otherwise the
    /// connection is made by the first request.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, TreeError> {
        let client = connect_client(config, true).await?;
        let config = config.clone();
        let layout = Layout::new(&config.prefix);
        Ok(Self {
            client,
            layout,
            config,
        })
    }

    /// A client on a connection of its own, without HTTP/2 pings, for the
    /// lease keeper: renewals never queue behind the tree's requests, and a
    /// late answer does not close the connection that carries them.
    pub(crate) async fn lease_client(config: &EtcdConfig) -> Result<Client, TreeError> {
        connect_client(config, false).await
    }

    /// The key layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The connection settings.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The underlying etcd client, for watches and leases.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs one request with timeout and retries.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, TreeError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        retry::with_backoff(&self.config, what, || op(self.client.clone())).await
    }

    /// Creates a service (a marker key, so it exists before it has groups).
    /// Returns false when it already existed.
    pub async fn create_service(&self, service: &str) -> Result<bool, TreeError> {
        paths::validate_service(service)?;
        let marker = self.layout.service_marker(service);
        let txn = Txn::new()
            .when([Compare::version(marker.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(marker, "{}", None)]);
        let response = self.txn("create service", txn).await?;
        Ok(response.succeeded())
    }

    /// Creates a group with its config, atomically: of two concurrent
    /// creators exactly one succeeds, the other gets [`TreeError::GroupExists`].
    pub async fn create_group(
        &self,
        service: &str,
        group: &str,
        config: &GroupConfig,
    ) -> Result<(), TreeError> {
        self.check(service, group)?;
        let key = self.layout.config(service, group);
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, config_json(config), None)]);
        let response = self.txn("create group", txn).await?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(TreeError::GroupExists {
                service: service.into(),
                group: group.into(),
            })
        }
    }

    /// Removes a service and everything under it; returns the keys removed.
    pub async fn remove_service(&self, service: &str) -> Result<i64, TreeError> {
        paths::validate_service(service)?;
        self.delete_prefix(&self.layout.service(service)).await
    }

    /// Removes a group and everything under it; returns the keys removed.
    pub async fn remove_group(&self, service: &str, group: &str) -> Result<i64, TreeError> {
        self.check(service, group)?;
        self.delete_prefix(&self.layout.group(service, group)).await
    }

    /// Deletes every key under `prefix` (which must end in `/`).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64, TreeError> {
        let options = DeleteOptions::new().with_prefix();
        let response = self.delete("delete range", prefix, Some(options)).await?;
        Ok(response.deleted())
    }

    /// Whether the service has any key.
    pub async fn service_exists(&self, service: &str) -> Result<bool, TreeError> {
        paths::validate_service(service)?;
        self.any_under(&self.layout.service(service)).await
    }

    /// Whether the group has any key.
    pub async fn group_exists(&self, service: &str, group: &str) -> Result<bool, TreeError> {
        self.check(service, group)?;
        self.any_under(&self.layout.group(service, group)).await
    }

    async fn any_under(&self, prefix: &str) -> Result<bool, TreeError> {
        let options = GetOptions::new().with_prefix().with_count_only();
        let response = self.get("count range", prefix, Some(options)).await?;
        Ok(response.count() > 0)
    }

    /// The names of all services, sorted.
    pub async fn service_names(&self) -> Result<Vec<String>, TreeError> {
        let keys = self.keys(&self.layout.root()).await?;
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|k| match self.layout.parse(k)? {
                Key::ServiceMarker { service }
                | Key::Config { service, .. }
                | Key::Info { service, .. }
                | Key::Other { service, .. } => Some(service),
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    /// The groups of a service, sorted.
    pub async fn service_groups(&self, service: &str) -> Result<Vec<String>, TreeError> {
        paths::validate_service(service)?;
        let keys = self.keys(&self.layout.service(service)).await?;
        let mut groups: Vec<String> = keys
            .iter()
            .filter_map(|k| match self.layout.parse(k)? {
                Key::Config { group, .. } | Key::Info { group, .. } => Some(group),
                Key::Other { group, .. } => group,
                Key::ServiceMarker { .. } => None,
            })
            .collect();
        groups.dedup();
        Ok(groups)
    }

    /// Every container of every group of a service.
    pub async fn service_containers(
        &self,
        service: &str,
    ) -> Result<Vec<ContainerEntry>, TreeError> {
        paths::validate_service(service)?;
        let range = self.range(&self.layout.service(service)).await?;
        let mut out = Vec::new();
        for entry in &range.entries {
            if let Some(Key::Info {
                group, container, ..
            }) = self.layout.parse(&entry.key)
            {
                let info = parse_json(&entry.key, &entry.value)?;
                out.push(ContainerEntry {
                    group,
                    container,
                    info,
                });
            }
        }
        Ok(out)
    }

    /// A group's config; `None` when the group has no config key.
    pub async fn group_config(
        &self,
        service: &str,
        group: &str,
    ) -> Result<Option<GroupConfig>, TreeError> {
        self.check(service, group)?;
        self.get_json(&self.layout.config(service, group)).await
    }

    /// Writes a group's config (creating the group when it is missing).
    pub async fn set_group_config(
        &self,
        service: &str,
        group: &str,
        config: &GroupConfig,
    ) -> Result<(), TreeError> {
        self.check(service, group)?;
        let key = self.layout.config(service, group);
        let value = config_json(config);
        self.call("set group config", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    /// The names of a group's containers, sorted.
    pub async fn group_container_names(
        &self,
        service: &str,
        group: &str,
    ) -> Result<Vec<String>, TreeError> {
        self.check(service, group)?;
        let keys = self.keys(&self.layout.containers(service, group)).await?;
        Ok(keys
            .iter()
            .filter_map(|k| match self.layout.parse(k)? {
                Key::Info { container, .. } => Some(container),
                _ => None,
            })
            .collect())
    }

    /// Whether a container is registered.
    pub async fn container_exists(
        &self,
        service: &str,
        group: &str,
        container: &str,
    ) -> Result<bool, TreeError> {
        Ok(self
            .container_info(service, group, container)
            .await?
            .is_some())
    }

    /// A container's info; `None` when it is not registered.
    pub async fn container_info(
        &self,
        service: &str,
        group: &str,
        container: &str,
    ) -> Result<Option<ContainerInfo>, TreeError> {
        self.check_container(service, group, container)?;
        self.get_json(&self.layout.info(service, group, container))
            .await
    }

    /// Writes a container's info. An existing key keeps its lease; a missing
    /// one is created without a lease.
    pub async fn set_container_info(
        &self,
        service: &str,
        group: &str,
        container: &str,
        info: &ContainerInfo,
    ) -> Result<(), TreeError> {
        self.check_container(service, group, container)?;
        let key = self.layout.info(service, group, container);
        let value = info.to_json();
        let keep_lease = PutOptions::new().with_ignore_lease();
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::put(key.clone(), value.clone(), Some(keep_lease))])
            .or_else([TxnOp::put(key, value, None)]);
        self.txn("set container info", txn).await?;
        Ok(())
    }

    /// Registers a container in an existing group, atomically: fails with
    /// [`TreeError::GroupMissing`] or [`TreeError::ContainerExists`]. With a
    /// lease, the entry disappears when the lease expires.
    pub async fn register_container(
        &self,
        service: &str,
        group: &str,
        container: &str,
        info: &ContainerInfo,
        lease: Option<i64>,
    ) -> Result<(), TreeError> {
        self.check_container(service, group, container)?;
        let config = self.layout.config(service, group);
        let key = self.layout.info(service, group, container);
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([
                Compare::version(config.clone(), CompareOp::Greater, 0),
                Compare::version(key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(key, info.to_json(), options)])
            .or_else([TxnOp::get(
                config,
                Some(GetOptions::new().with_count_only()),
            )]);
        let response = self.txn("register container", txn).await?;
        if response.succeeded() {
            return Ok(());
        }
        let exists = self.group_exists(service, group).await?;
        let (service, group) = (service.to_owned(), group.to_owned());
        let container = container.to_owned();
        if exists {
            Err(TreeError::ContainerExists {
                service,
                group,
                container,
            })
        } else {
            Err(TreeError::GroupMissing { service, group })
        }
    }

    /// Removes a container's entry; returns whether it was registered.
    pub async fn deregister_container(
        &self,
        service: &str,
        group: &str,
        container: &str,
    ) -> Result<bool, TreeError> {
        self.check_container(service, group, container)?;
        let key = self.layout.info(service, group, container);
        let prefix = format!("{}/", key.trim_end_matches("/info"));
        let options = DeleteOptions::new().with_prefix();
        let response = self
            .delete("deregister container", &prefix, Some(options))
            .await?;
        Ok(response.deleted() > 0)
    }

    fn check(&self, service: &str, group: &str) -> Result<(), PathError> {
        paths::validate_service(service)?;
        paths::validate_group(group)
    }

    fn check_container(
        &self,
        service: &str,
        group: &str,
        container: &str,
    ) -> Result<(), PathError> {
        self.check(service, group)?;
        paths::validate_container(container)
    }
}

/// Parses a stored JSON value, naming the key when it is not valid.
pub fn parse_json<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Result<T, TreeError> {
    serde_json::from_str(value).map_err(|source| TreeError::BadValue {
        key: key.to_owned(),
        source,
    })
}

/// How long to wait before attempt `n` (0-based) of a retried request.
pub fn backoff(attempt: u32) -> Duration {
    let millis = 100u64.saturating_mul(1 << attempt.min(6));
    Duration::from_millis(millis.min(5_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let waits: Vec<u64> = (0..9).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(
            waits,
            vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
    }
}
