//! Timeouts and retries with backoff for etcd requests.

use std::future::Future;

use tonic::Code;

use super::{TreeError, backoff};
use crate::discovery::config::EtcdConfig;

/// Whether retrying `error` can help: etcd or the network is down or busy,
/// as opposed to a request etcd refuses.
pub fn is_transient(error: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match error {
        E::TransportError(_) | E::IoError(_) | E::LeaseKeepAliveError(_) | E::WatchError(_) => true,
        E::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Internal
                | Code::Cancelled
        ),
        _ => false,
    }
}

/// Runs `op` up to `config.attempts` times, each bounded by the request
/// timeout, sleeping with exponential backoff between attempts.
pub(super) async fn with_backoff<T, F, Fut>(
    config: &EtcdConfig,
    what: &str,
    mut op: F,
) -> Result<T, TreeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let attempts = config.attempts.max(1);
    let mut last = String::new();
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        match tokio::time::timeout(config.request_timeout, op()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if !is_transient(&error) => {
                return Err(TreeError::Rejected {
                    endpoints: config.endpoints_text(),
                    what: what.to_owned(),
                    source: error,
                });
            }
            Ok(Err(error)) => last = error.to_string(),
            Err(_) => last = format!("no answer within {:?}", config.request_timeout),
        }
        tracing::debug!(what, attempt, error = %last, "discovery etcd request failed");
    }
    Err(TreeError::Unavailable {
        endpoints: config.endpoints_text(),
        what: what.to_owned(),
        attempts,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_and_timeouts_are_transient_but_auth_failures_are_not() {
        let status = |code| etcd_client::Error::GRpcStatus(tonic::Status::new(code, "x"));
        let cases = [
            ("etcd unavailable", status(Code::Unavailable), true),
            ("deadline exceeded", status(Code::DeadlineExceeded), true),
            ("bad credentials", status(Code::InvalidArgument), false),
            ("permission denied", status(Code::PermissionDenied), false),
            (
                "invalid arguments",
                etcd_client::Error::InvalidArgs("x".into()),
                false,
            ),
        ];
        for (name, error, transient) in cases {
            assert_eq!(is_transient(&error), transient, "{name}");
        }
    }
}
