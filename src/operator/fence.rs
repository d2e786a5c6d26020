//! The write fence: the operator's controllers talk to the API server
//! through a client that refuses to send a write (POST, PUT, PATCH, DELETE)
//! unless this replica's right to lead is still valid by the local monotonic
//! clock ([`Leadership`]). A leader that was frozen (SIGSTOP, a long GC-like
//! stall, a suspended VM) past its lease therefore writes nothing when it
//! resumes, even before its elector has noticed; and every write it did send
//! carries a resourceVersion, so one based on a stale read is refused too.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{Method, Request};
use tower::{BoxError, Layer, Service};

use super::leader::Leadership;

/// Why a write was not sent.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "{method} {path} not sent: this replica no longer holds the leader lease (not renewed in time); the leader writes"
)]
pub struct NotLeading {
    method: Method,
    path: String,
}

/// Wraps a client's service in a [`Fence`].
#[derive(Clone, Debug)]
pub struct FenceLayer(pub Leadership);

impl<S> Layer<S> for FenceLayer {
    type Service = Fence<S>;

    fn layer(&self, inner: S) -> Fence<S> {
        Fence {
            inner,
            leadership: self.0.clone(),
        }
    }
}

/// A service that passes reads, and passes writes only while we lead.
#[derive(Clone, Debug)]
pub struct Fence<S> {
    inner: S,
    leadership: Leadership,
}

/// Whether a request changes anything on the server.
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

type Boxed<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, B> Service<Request<B>> for Fence<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Boxed<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let write = is_write(request.method()).then(|| NotLeading {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
        });
        let leadership = self.leadership.clone();
        if let Some(refused) = &write
            && !leadership.is_valid()
        {
            let refused = refused.clone();
            return Box::pin(async move { Err(refused.into()) });
        }
        let sent = self.inner.call(request);
        Box::pin(async move {
            // Checked again when the request is first polled, right before
            // it goes out: the process may have been frozen in between.
            if let Some(refused) = write
                && !leadership.is_valid()
            {
                return Err(refused.into());
            }
            sent.await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    type Answer = fn(Request<()>) -> std::future::Ready<Result<&'static str, Infallible>>;

    async fn send(
        fence: &mut Fence<tower::util::ServiceFn<Answer>>,
        method: Method,
    ) -> Result<&'static str, String> {
        let request = Request::builder()
            .method(method)
            .uri("/apis/theseus.dev/v1alpha1/nodeinstalls/n0")
            .body(())
            .unwrap();
        fence.call(request).await.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn writes_pass_only_while_the_leadership_is_valid_and_reads_always() {
        let leadership = Leadership::default();
        let answer: Answer = |_| std::future::ready(Ok("sent"));
        let mut fence = FenceLayer(leadership.clone()).layer(tower::service_fn(answer));
        assert_eq!(send(&mut fence, Method::GET).await, Ok("sent"));
        let refused = send(&mut fence, Method::PATCH).await.unwrap_err();
        assert!(
            refused.contains("PATCH /apis/theseus.dev/v1alpha1/nodeinstalls/n0 not sent"),
            "{refused}"
        );

        leadership.hold_for_test(std::time::Duration::from_secs(60));
        assert_eq!(send(&mut fence, Method::PATCH).await, Ok("sent"));
        assert_eq!(send(&mut fence, Method::DELETE).await, Ok("sent"));

        leadership.hold_for_test(std::time::Duration::ZERO);
        assert!(send(&mut fence, Method::POST).await.is_err());
        assert_eq!(send(&mut fence, Method::GET).await, Ok("sent"));
    }
}
