//! Runs the controllers while this replica leads, stops them when it does
//! not, and notices when one of them dies: a controller that ends by itself
//! or panics while we lead would otherwise leave its objects unreconciled
//! for as long as the process lives. Then `/readyz` fails, the others stop,
//! and the operator exits non-zero so that its Deployment restarts it.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::http::Readiness;

/// How long stopping controllers may take before they are aborted.
const CONTROLLER_STOP_GRACE: Duration = Duration::from_secs(10);

/// Why a term of leadership ended.
enum Ended {
    /// We lost the lease: follow, and campaign again.
    Deposed,
    /// SIGTERM or SIGINT.
    Shutdown,
    /// A controller died; the message says which and how.
    Died(String),
}

/// Starts the controllers `spawn` returns (name and future, each stopping
/// when the token is cancelled) whenever we lead, and stops them when we
/// do not. Returns `Ok` once `shutdown` is cancelled, or `Err` naming the
/// controller that died; either way with every controller stopped.
pub(super) async fn lead<F>(
    mut leading: watch::Receiver<bool>,
    spawn: F,
    readiness: &Readiness,
    shutdown: CancellationToken,
) -> Result<(), String>
where
    F: Fn(&CancellationToken) -> Vec<(&'static str, BoxFuture<'static, ()>)>,
{
    loop {
        let elected = tokio::select! {
            r = leading.wait_for(|l| *l) => r.is_ok(),
            () = shutdown.cancelled() => false,
        };
        if !elected {
            return Ok(());
        }
        info!("leading: starting controllers");
        let stop = CancellationToken::new();
        let (died_tx, mut died) = mpsc::unbounded_channel();
        let tasks: Vec<JoinHandle<()>> = spawn(&stop)
            .into_iter()
            .map(|(name, work)| tokio::spawn(watched(name, work, stop.clone(), died_tx.clone())))
            .collect();
        drop(died_tx);
        let ended = tokio::select! {
            r = leading.wait_for(|l| !*l) => if r.is_ok() { Ended::Deposed } else { Ended::Shutdown },
            () = shutdown.cancelled() => Ended::Shutdown,
            Some(why) = died.recv() => Ended::Died(why),
        };
        match &ended {
            Ended::Deposed => warn!("lost leadership: stopping controllers"),
            Ended::Died(why) => {
                readiness.fail(why);
                error!("{why}: stopping the other controllers and exiting");
            }
            Ended::Shutdown => {}
        }
        stop.cancel();
        stop_all(tasks).await;
        match ended {
            Ended::Deposed => {}
            Ended::Shutdown => return Ok(()),
            Ended::Died(why) => return Err(why),
        }
    }
}

/// Runs one controller and reports on `died` if it ends before `stop`.
async fn watched(
    name: &'static str,
    work: BoxFuture<'static, ()>,
    stop: CancellationToken,
    died: mpsc::UnboundedSender<String>,
) {
    let outcome = AssertUnwindSafe(work).catch_unwind().await;
    if stop.is_cancelled() {
        return;
    }
    let why = match outcome {
        Ok(()) => format!("the {name} controller stopped by itself"),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            format!("the {name} controller panicked: {message}")
        }
    };
    let _ = died.send(why);
}

/// Waits for the controllers to stop, aborting those that take too long.
async fn stop_all(tasks: Vec<JoinHandle<()>>) {
    let deadline = tokio::time::Instant::now() + CONTROLLER_STOP_GRACE;
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            warn!("a controller did not stop within {CONTROLLER_STOP_GRACE:?}; aborting it");
            abort.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A controller that stops `linger` after it is told to.
    fn lingering(stop: CancellationToken, linger: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            stop.cancelled().await;
            tokio::time::sleep(linger).await;
        })
    }

    fn panicking() -> BoxFuture<'static, ()> {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("lost its store");
        })
    }

    #[tokio::test]
    async fn a_panicking_controller_fails_readiness_stops_the_others_and_is_an_error() {
        let (_tx, leading) = watch::channel(true);
        let readiness = Readiness::not_yet("starting");
        readiness.ready();
        let started = Arc::new(AtomicUsize::new(0));
        let spawn = |stop: &CancellationToken| {
            started.fetch_add(1, Ordering::SeqCst);
            vec![
                ("broken", panicking()),
                ("slow", lingering(stop.clone(), Duration::from_millis(500))),
            ]
        };
        let outcome = {
            let run = lead(leading, spawn, &readiness, CancellationToken::new());
            tokio::pin!(run);
            // Readiness fails while the slow controller is still stopping.
            let seen = tokio::select! {
                _ = &mut run => panic!("lead returned before readiness failed"),
                problem = async {
                    loop {
                        if let Some(p) = readiness.problem() { break p; }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                } => problem,
            };
            assert!(
                seen.contains("the broken controller panicked: lost its store"),
                "{seen}"
            );
            run.await
        };
        assert_eq!(
            outcome,
            Err("the broken controller panicked: lost its store".to_owned())
        );
        assert_eq!(started.load(Ordering::SeqCst), 1, "not restarted in place");
    }

    #[tokio::test]
    async fn a_controller_that_ends_by_itself_is_an_error() {
        let (_tx, leading) = watch::channel(true);
        let readiness = Readiness::not_yet("starting");
        let spawn = |stop: &CancellationToken| {
            vec![
                ("quitter", Box::pin(async {}) as BoxFuture<'static, ()>),
                ("steady", lingering(stop.clone(), Duration::ZERO)),
            ]
        };
        let outcome = lead(leading, spawn, &readiness, CancellationToken::new()).await;
        assert_eq!(
            outcome,
            Err("the quitter controller stopped by itself".to_owned())
        );
        assert_eq!(readiness.problem(), outcome.err());
    }

    #[tokio::test]
    async fn a_shutdown_stops_the_controllers_and_is_no_error() {
        let (_tx, leading) = watch::channel(true);
        let readiness = Readiness::not_yet("starting");
        readiness.ready();
        let shutdown = CancellationToken::new();
        let spawn =
            |stop: &CancellationToken| vec![("steady", lingering(stop.clone(), Duration::ZERO))];
        let later = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            later.cancel();
        });
        assert_eq!(lead(leading, spawn, &readiness, shutdown).await, Ok(()));
        assert_eq!(readiness.problem(), None);
    }
}
