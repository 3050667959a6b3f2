//! The caller-facing deadline of a request, by kind: interactive calls (decisions, captures,
//! rights, reads) get [`crate::stack::REQUEST_TIMEOUT`]; a bulk call (`ImportConsent` and
//! `RegisterBatch`, whose node
//! calls have a deadline of their own, the gateway's `bulk_timeout_ms`) gets the server's own,
//! longer deadline, so a batch a loaded region takes seconds to write is not cut off halfway by
//! the interactive one (an import cut off is sent again by the CLI, every time).
//!
//! The server's deadline (tonic's, which also honours the caller's `grpc-timeout`) is the longer
//! one; this layer, inside it, cuts interactive calls shorter. A call cut off is answered as
//! tonic answers its own deadline (CANCELLED, "Timeout expired").

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The bulk calls (`ImportConsent`; `RegisterBatch`, up to 1,000 registrations, each claimed and
/// stored): the server's longer deadline, the larger request limit.
pub const BULK_PATHS: [&str; 2] =
    ["/domicile.gateway.v1.Domicile/ImportConsent", "/domicile.gateway.v1.Domicile/RegisterBatch"];

#[derive(Debug, Clone, Copy)]
pub struct InteractiveDeadlineLayer {
    deadline: Duration,
}

impl InteractiveDeadlineLayer {
    pub fn new(deadline: Duration) -> Self {
        Self { deadline }
    }
}

impl<S> tower::Layer<S> for InteractiveDeadlineLayer {
    type Service = InteractiveDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InteractiveDeadline { inner, deadline: self.deadline }
    }
}

#[derive(Debug, Clone)]
pub struct InteractiveDeadline<S> {
    inner: S,
    deadline: Duration,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for InteractiveDeadline<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let bulk = BULK_PATHS.contains(&request.uri().path());
        let call = self.inner.call(request);
        let deadline = self.deadline;
        Box::pin(async move {
            if bulk {
                return call.await.map_err(Into::into);
            }
            match tokio::time::timeout(deadline, call).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => Err(Box::new(tonic::TimeoutExpired(())) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer as _, Service as _, ServiceExt as _};

    use super::*;

    /// A service that answers after `delay`.
    fn slow(delay: Duration) -> tower::util::BoxService<http::Request<()>, http::Response<()>, BoxError> {
        tower::util::BoxService::new(tower::service_fn(move |_: http::Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, BoxError>(http::Response::new(()))
        }))
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(format!("http://gateway{path}")).body(()).unwrap()
    }

    #[tokio::test]
    async fn interactive_calls_are_cut_at_the_deadline_and_bulk_calls_are_not() {
        let layer = InteractiveDeadlineLayer::new(Duration::from_millis(20));
        let mut service = layer.layer(slow(Duration::from_millis(80)));
        let cut = service.ready().await.unwrap().call(request("/domicile.gateway.v1.Domicile/Decide")).await;
        let error = cut.expect_err("an interactive call past the deadline is cut");
        assert!(error.downcast_ref::<tonic::TimeoutExpired>().is_some(), "answered as tonic's own deadline: {error}");
        for path in BULK_PATHS {
            let bulk = service.ready().await.unwrap().call(request(path)).await;
            assert!(bulk.is_ok(), "a bulk call runs on to the server's deadline: {path}");
        }
        let mut quick = layer.layer(slow(Duration::from_millis(1)));
        assert!(quick.ready().await.unwrap().call(request("/domicile.gateway.v1.Domicile/Decide")).await.is_ok());
    }
}
