//! The EC2 provider: RunInstances with an idempotency token and owner tags,
//! DescribeInstances filtered by those tags, TerminateInstances only for
//! instances that carry them; throttling retried with jittered backoff, and
//! every call bounded by a deadline so that an endpoint that stops
//! answering fails the pass (and degrades the pool) instead of wedging it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceType, ResourceType, Tag, TagSpecification,
};
use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use rand::Rng;

use super::provider::{self, CLUSTER_TAG, Instance, LAUNCH_TAG, Owner, POOL_TAG, Provider};
use super::userdata::{self, Bootstrap};
use crate::api::AwsProvider;

/// Error codes EC2 uses for throttling.
const THROTTLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequestsException",
];

/// How long a listing is reused: the pass that follows our own write (the
/// watch event of the status we just wrote) plans from what we know
/// instead of describing again. Our own launches and terminations are
/// applied to it, so only outside changes can wait this long.
const LIST_TTL: Duration = Duration::from_secs(2);

/// How long a connection to the endpoint may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The deadline of one EC2 call when `spec.provider.aws.timeoutSeconds` is
/// not set: generous for a 1000-instance DescribeInstances page, short
/// enough that a pool whose endpoint stopped answering says so quickly.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Instance states that count as existing.
const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

/// Errors of the EC2 provider.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An EC2 call failed for good (or stayed throttled past the retries).
    #[error(
        "NodePool {pool}: EC2 {op} failed after {attempts} attempt(s): {message}; check the pool's region, endpoint, credentials and IAM permissions"
    )]
    Call {
        /// The pool.
        pool: String,
        /// The EC2 operation.
        op: &'static str,
        /// How many times it was tried.
        attempts: u32,
        /// Whether the last answer was a throttling refusal.
        throttled: bool,
        /// What EC2 said.
        message: String,
    },
    /// An EC2 call got no answer before its deadline.
    #[error(
        "NodePool {pool}: EC2 {op} at {endpoint} did not answer within {}s (timeout); check that the endpoint is reachable and answering, or raise spec.provider.aws.timeoutSeconds",
        .after.as_secs()
    )]
    Timeout {
        /// The pool.
        pool: String,
        /// The EC2 operation.
        op: &'static str,
        /// The endpoint called.
        endpoint: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// An instance to terminate lacks the owner tags.
    #[error(
        "NodePool {pool}: refusing to terminate instance {id}: it does not carry {POOL_TAG}={pool} and {CLUSTER_TAG}={cluster}"
    )]
    NotOwned {
        /// The pool.
        pool: String,
        /// The cluster.
        cluster: String,
        /// The instance.
        id: String,
    },
}

impl From<Error> for provider::Error {
    fn from(e: Error) -> provider::Error {
        let kind = match &e {
            Error::Call {
                throttled: true, ..
            } => provider::Kind::Throttled,
            Error::Call { .. } => provider::Kind::Api,
            Error::Timeout { .. } => provider::Kind::Timeout,
            Error::NotOwned { .. } => provider::Kind::NotOwned,
        };
        provider::Error::new(kind, e)
    }
}

/// EC2 calls made, by operation (every attempt counts).
#[derive(Debug, Default)]
pub struct Calls {
    /// DescribeInstances calls.
    pub describe: AtomicU64,
    /// RunInstances calls.
    pub run: AtomicU64,
    /// TerminateInstances calls.
    pub terminate: AtomicU64,
    /// Attempts answered with throttling.
    pub throttled: AtomicU64,
}

impl Calls {
    /// The total of describe, run and terminate calls.
    pub fn total(&self) -> u64 {
        self.describe.load(Ordering::Relaxed)
            + self.run.load(Ordering::Relaxed)
            + self.terminate.load(Ordering::Relaxed)
    }
}

/// Full-jitter exponential backoff for throttled calls.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// The first backoff ceiling.
    pub base: Duration,
    /// The largest backoff ceiling.
    pub cap: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 8,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

impl Retry {
    /// The sleep before attempt `n + 1`: uniform in [0, min(cap, base·2ⁿ)].
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1 << n.min(16)).min(self.cap);
        rand::thread_rng().gen_range(Duration::ZERO..=ceiling)
    }
}

/// The deadline of one call for `settings`.
pub fn call_timeout(settings: &AwsProvider) -> Duration {
    settings
        .timeout_seconds
        .filter(|s| *s > 0)
        .map_or(DEFAULT_CALL_TIMEOUT, |s| Duration::from_secs(s as u64))
}

/// The endpoint calls go to, for messages.
pub fn endpoint(settings: &AwsProvider) -> String {
    settings
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com", settings.region))
}

/// The SDK's timeouts for `settings`: the SDK makes one attempt per
/// operation (retries are ours), so both deadlines are the call's.
fn timeouts(settings: &AwsProvider) -> TimeoutConfig {
    let call = call_timeout(settings);
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(call))
        .operation_attempt_timeout(call)
        .operation_timeout(call)
        .build()
}

/// Builds an EC2 client for `settings`: credentials from `static_keys` or
/// the standard chain, the endpoint override, deadlines on every call, and
/// no SDK retries (ours count every attempt).
pub async fn client(settings: &AwsProvider, static_keys: Option<(String, String)>) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts(settings));
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some((id, secret)) = static_keys {
        loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "secret"));
    }
    Client::new(&loader.load().await)
}

/// A pool's instances on EC2.
pub struct Ec2 {
    client: Client,
    owner: Owner,
    settings: AwsProvider,
    user_data: String,
    /// The calls made, for metrics and the benchmark.
    pub calls: Arc<Calls>,
    retry: Retry,
    listing: std::sync::Mutex<Option<(std::time::Instant, Vec<Instance>)>>,
}

impl Ec2 {
    /// A provider for `owner`'s pool with these settings and node labels.
    pub fn new(
        client: Client,
        owner: Owner,
        settings: AwsProvider,
        labels: &BTreeMap<String, String>,
    ) -> Ec2 {
        let user_data = userdata::encode(&Bootstrap {
            pool: &owner.pool,
            labels,
            extra: settings.user_data.as_deref(),
        });
        Ec2 {
            client,
            owner,
            settings,
            user_data,
            calls: Arc::default(),
            retry: Retry::default(),
            listing: std::sync::Mutex::new(None),
        }
    }

    /// Uses `retry` instead of the default backoff.
    pub fn with_retry(mut self, retry: Retry) -> Ec2 {
        self.retry = retry;
        self
    }

    /// Runs `call`, retrying throttling with jittered backoff.
    async fn call<T, E, F, Fut>(
        &self,
        op: &'static str,
        counter: &AtomicU64,
        mut call: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, aws_sdk_ec2::config::http::HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            counter.fetch_add(1, Ordering::Relaxed);
            let err = match call().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if is_timeout(&err) {
                return Err(Error::Timeout {
                    pool: self.owner.pool.clone(),
                    op,
                    endpoint: endpoint(&self.settings),
                    after: call_timeout(&self.settings),
                });
            }
            if is_throttle(&err) {
                self.calls.throttled.fetch_add(1, Ordering::Relaxed);
                if attempt < self.retry.attempts {
                    let wait = self.retry.backoff(attempt - 1);
                    tracing::debug!(pool = %self.owner.pool, op, attempt, ?wait, "EC2 throttled; backing off");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Err(Error::Call {
                pool: self.owner.pool.clone(),
                op,
                attempts: attempt,
                throttled: is_throttle(&err),
                message: DisplayErrorContext(&err).to_string(),
            });
        }
    }

    fn owner_filters(&self) -> Vec<Filter> {
        let f = |name: String, values: &[&str]| {
            Filter::builder()
                .name(name)
                .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
                .build()
        };
        vec![
            f(format!("tag:{POOL_TAG}"), &[&self.owner.pool]),
            f(format!("tag:{CLUSTER_TAG}"), &[&self.owner.cluster]),
            f("instance-state-name".into(), LIVE_STATES),
        ]
    }

    /// The listing, from the cache while it is fresh.
    async fn cached_describe(&self) -> Result<Vec<Instance>, Error> {
        if let Some((at, list)) = self.listing.lock().expect("listing").as_ref()
            && at.elapsed() < LIST_TTL
        {
            return Ok(list.clone());
        }
        let list = self.describe().await?;
        *self.listing.lock().expect("listing") = Some((std::time::Instant::now(), list.clone()));
        Ok(list)
    }

    /// Applies our own launches and terminations to the cached listing.
    fn amend(&self, added: &[Instance], removed: &[Instance]) {
        if let Some((_, list)) = self.listing.lock().expect("listing").as_mut() {
            list.retain(|i| !removed.iter().any(|r| r.id == i.id));
            list.extend(added.iter().cloned());
        }
    }

    async fn describe(&self) -> Result<Vec<Instance>, Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call("DescribeInstances", &self.calls.describe, || {
                    self.client
                        .describe_instances()
                        .set_filters(Some(self.owner_filters()))
                        .max_results(1000)
                        .set_next_token(token.clone())
                        .send()
                })
                .await?;
            for r in page.reservations() {
                out.extend(r.instances().iter().map(convert));
            }
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        // Belt and braces: an endpoint that ignores filters must not make us
        // adopt (or later terminate) someone else's instance.
        out.retain(|i| self.owner.owns(&i.tags));
        Ok(out)
    }

    async fn run(&self, first_seq: i64, count: usize) -> Result<Vec<Instance>, Error> {
        let s = &self.settings;
        let subnet = (!s.subnet_ids.is_empty()).then(|| {
            s.subnet_ids[first_seq.rem_euclid(s.subnet_ids.len() as i64) as usize].clone()
        });
        let mut tags: BTreeMap<String, String> = s.tags.clone();
        tags.insert(POOL_TAG.into(), self.owner.pool.clone());
        tags.insert(CLUSTER_TAG.into(), self.owner.cluster.clone());
        tags.insert(LAUNCH_TAG.into(), first_seq.to_string());
        tags.insert("Name".into(), format!("{}-{first_seq}", self.owner.pool));
        let spec = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .build();
        let count = count as i32;
        let out = self
            .call("RunInstances", &self.calls.run, || {
                self.client
                    .run_instances()
                    .image_id(&s.image_id)
                    .instance_type(InstanceType::from(s.instance_type.as_str()))
                    .min_count(count)
                    .max_count(count)
                    .client_token(self.owner.token(first_seq))
                    .set_subnet_id(subnet.clone())
                    .set_security_group_ids(
                        (!s.security_group_ids.is_empty()).then(|| s.security_group_ids.clone()),
                    )
                    .set_key_name(s.key_name.clone())
                    .set_iam_instance_profile(
                        s.instance_profile
                            .as_ref()
                            .map(|p| IamInstanceProfileSpecification::builder().name(p).build()),
                    )
                    .user_data(&self.user_data)
                    .tag_specifications(spec.clone())
                    .send()
            })
            .await?;
        Ok(out
            .instances()
            .iter()
            .map(convert)
            .map(|mut i| {
                // RunInstances may echo no tags; they were requested.
                if i.tags.is_empty() {
                    i.tags = tags.clone();
                }
                i
            })
            .collect())
    }

    async fn terminate_owned(&self, instances: &[Instance]) -> Result<(), Error> {
        if let Some(foreign) = instances.iter().find(|i| !self.owner.owns(&i.tags)) {
            return Err(Error::NotOwned {
                pool: self.owner.pool.clone(),
                cluster: self.owner.cluster.clone(),
                id: foreign.id.clone(),
            });
        }
        for chunk in instances.chunks(1000) {
            let ids: Vec<String> = chunk.iter().map(|i| i.id.clone()).collect();
            self.call("TerminateInstances", &self.calls.terminate, || {
                self.client
                    .terminate_instances()
                    .set_instance_ids(Some(ids.clone()))
                    .send()
            })
            .await?;
        }
        Ok(())
    }
}

fn is_throttle<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
) -> bool {
    if err.code().is_some_and(|c| THROTTLE_CODES.contains(&c)) {
        return true;
    }
    err.raw_response()
        .is_some_and(|r| matches!(r.status().as_u16(), 429 | 503))
}

fn is_timeout<E>(err: &SdkError<E, aws_sdk_ec2::config::http::HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) => true,
        SdkError::DispatchFailure(failure) => failure.is_timeout(),
        _ => false,
    }
}

/// An EC2 instance as the provider trait lists it. A missing launch time
/// stays missing: the planner ages such an instance from when it first saw
/// it (defaulting to "now" here would keep it young forever).
fn convert(i: &aws_sdk_ec2::types::Instance) -> Instance {
    let launched = i
        .launch_time()
        .and_then(|t| Timestamp::from_second(t.secs()).ok());
    Instance {
        id: i.instance_id().unwrap_or_default().to_owned(),
        launched,
        tags: i
            .tags()
            .iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                ))
            })
            .collect(),
    }
}

impl Provider for Ec2 {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Instance>, provider::Error>> {
        Box::pin(async move { Ok(self.cached_describe().await?) })
    }

    fn launch(
        &self,
        first_seq: i64,
        count: usize,
    ) -> BoxFuture<'_, Result<Vec<Instance>, provider::Error>> {
        Box::pin(async move {
            let launched = self.run(first_seq, count).await?;
            self.amend(&launched, &[]);
            Ok(launched)
        })
    }

    fn terminate<'a>(
        &'a self,
        instances: &'a [Instance],
    ) -> BoxFuture<'a, Result<(), provider::Error>> {
        Box::pin(async move {
            self.terminate_owned(instances).await?;
            self.amend(&[], instances);
            Ok(())
        })
    }
}

#[cfg(test)]
#[path = "aws_tests.rs"]
mod tests;
