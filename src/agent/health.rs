//! Health checks: HTTP (2xx), TCP connect, exec (exit 0), each bounded by a
//! timeout and retried until a deadline.

use std::time::Duration;

use crate::pkg::pkginfo::HealthCheck;

/// Why a service is not healthy.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HealthError {
    /// The HTTP check answered outside 2xx.
    #[error("GET {url} answered HTTP {status}; the service is up but not healthy, see its log")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The HTTP check got no answer.
    #[error("GET {url} failed: {message}; is the service listening there?")]
    HttpUnreachable {
        /// The URL.
        url: String,
        /// The transport error.
        message: String,
    },
    /// Nothing accepts connections at the address.
    #[error("TCP connect to {addr} failed: {message}; is the service listening there?")]
    TcpRefused {
        /// `HOST:PORT`.
        addr: String,
        /// The connect error.
        message: String,
    },
    /// The exec check exited non-zero or could not run.
    #[error("health command {argv:?} {outcome}")]
    Exec {
        /// The command.
        argv: Vec<String>,
        /// "exited with status 1", "cannot run: …".
        outcome: String,
    },
    /// One probe took longer than its timeout.
    #[error("{what} did not answer within {seconds} s")]
    Timeout {
        /// The probe.
        what: String,
        /// Its timeout.
        seconds: u64,
    },
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An URL that must answer 2xx to GET.
    Http(String),
    /// `HOST:PORT` that must accept a connection.
    Tcp(String),
    /// A command that must exit 0.
    Exec(Vec<String>),
}

/// One health probe with its per-attempt timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What to check.
    pub target: Target,
    /// How long one attempt may take.
    pub timeout: Duration,
}

impl Probe {
    /// Builds a probe from a package's health check, passing every string
    /// through `sub` (which substitutes `${KEY}`) with its field name.
    pub fn from_check<E>(
        check: &HealthCheck,
        mut sub: impl FnMut(&str, &str) -> Result<String, E>,
    ) -> Result<Self, E> {
        let target = if let Some(url) = &check.http {
            Target::Http(sub("http", url)?)
        } else if let Some(addr) = &check.tcp {
            Target::Tcp(sub("tcp", addr)?)
        } else {
            let argv = check.exec.clone().unwrap_or_default();
            let mut out = Vec::with_capacity(argv.len());
            for (i, a) in argv.iter().enumerate() {
                out.push(sub(&format!("exec[{i}]"), a)?);
            }
            Target::Exec(out)
        };
        Ok(Self {
            target,
            timeout: Duration::from_secs(check.timeout_seconds),
        })
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Http(url) => format!("GET {url}"),
            Target::Tcp(addr) => format!("TCP {addr}"),
            Target::Exec(argv) => format!("health command {argv:?}"),
        }
    }

    /// One attempt.
    pub async fn once(&self) -> Result<(), HealthError> {
        let attempt = async {
            match &self.target {
                Target::Http(url) => http(url, self.timeout).await,
                Target::Tcp(addr) => tcp(addr).await,
                Target::Exec(argv) => exec(argv).await,
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(HealthError::Timeout {
                what: self.describe(),
                seconds: self.timeout.as_secs(),
            }),
        }
    }

    /// Up to `1 + retries` attempts, `interval` apart; the last error if
    /// none succeeds.
    pub async fn check(&self, retries: u32, interval: Duration) -> Result<(), HealthError> {
        let mut attempt = 0;
        loop {
            match self.once().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= retries => return Err(e),
                Err(_) => attempt += 1,
            }
            tokio::time::sleep(interval).await;
        }
    }
}

async fn http(url: &str, timeout: Duration) -> Result<(), HealthError> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| HealthError::HttpUnreachable {
            url: url.into(),
            message: e.to_string(),
        })?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| HealthError::HttpUnreachable {
            url: url.into(),
            message: e.to_string(),
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(HealthError::HttpStatus {
            url: url.into(),
            status: status.as_u16(),
        })
    }
}

async fn tcp(addr: &str) -> Result<(), HealthError> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(|e| HealthError::TcpRefused {
            addr: addr.into(),
            message: e.to_string(),
        })
}

async fn exec(argv: &[String]) -> Result<(), HealthError> {
    let err = |outcome: String| HealthError::Exec {
        argv: argv.to_vec(),
        outcome,
    };
    let (program, args) = argv.split_first().ok_or_else(|| err("is empty".into()))?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| err(format!("cannot run: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(err(format!("exited with {status}")))
    }
}
