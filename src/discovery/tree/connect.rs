//! Connection options: timeouts, user and password, TLS.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::TreeError;
use crate::discovery::config::EtcdConfig;

/// The etcd-client options for `config`. With `pings`, HTTP/2 pings close a
/// connection whose peer stops answering; the lease connection goes
/// without, because an answer that is merely late must not cut off the
/// renewals it carries (the lease keeper reconnects on its own terms).
pub(super) fn options(config: &EtcdConfig, pings: bool) -> Result<ConnectOptions, TreeError> {
    if config.endpoints.is_empty() {
        return Err(TreeError::Setup(
            "no discovery etcd endpoint; pass --discovery-etcd URL".into(),
        ));
    }
    let mut options = ConnectOptions::new().with_connect_timeout(config.request_timeout);
    if pings {
        options = options
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), config.request_timeout)
            .with_keep_alive_while_idle(true);
    }
    if let Some((user, password)) = &config.user {
        options = options.with_user(user.clone(), password.clone());
    }
    let wants_tls = config.ca.is_some()
        || config.identity.is_some()
        || config.endpoints.iter().any(|e| e.starts_with("https://"));
    if wants_tls {
        options = options.with_tls(tls(config)?);
    }
    Ok(options)
}

fn tls(config: &EtcdConfig) -> Result<TlsOptions, TreeError> {
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let Some(identity) = &config.identity {
        tls = tls.identity(Identity::from_pem(
            read(&identity.cert)?,
            read(&identity.key)?,
        ));
    }
    Ok(tls)
}

fn read(path: &Path) -> Result<Vec<u8>, TreeError> {
    std::fs::read(path).map_err(|e| {
        TreeError::Setup(format!(
            "cannot read {}: {e}; check --etcd-ca, --etcd-cert and --etcd-key",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_endpoint_is_a_clear_error() {
        let config = EtcdConfig::new(Vec::<String>::new());
        let err = options(&config, true).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("--discovery-etcd")));
    }

    #[test]
    fn a_missing_ca_file_names_the_file_and_the_option() {
        let mut config = EtcdConfig::new(["https://127.0.0.1:1"]);
        config.ca = Some("/nonexistent/ca.pem".into());
        let err = options(&config, true).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("/nonexistent/ca.pem") && e.contains("--etcd-ca")));
    }
}
