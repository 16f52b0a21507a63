use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// The response future of [`CacheService`](super::CacheService).
    pub struct ResponseFuture<F, Resp> {
        #[pin]
        kind: Kind<F, Resp>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, Resp> {
        // No key: the inner service's own future.
        Bypass { #[pin] fut: F },
        // A cache lookup (and maybe a load).
        Cached { fut: BoxFuture<'static, Result<Resp, BoxError>> },
        // Answered inside `call` (a local hit).
        Ready { #[pin] fut: std::future::Ready<Result<Resp, BoxError>> },
    }
}

impl<F, Resp> ResponseFuture<F, Resp> {
    pub(super) fn bypass(fut: F) -> Self {
        Self {
            kind: Kind::Bypass { fut },
        }
    }

    pub(super) fn ready(resp: Resp) -> Self {
        Self {
            kind: Kind::Ready {
                fut: std::future::ready(Ok(resp)),
            },
        }
    }

    pub(super) fn cached(fut: BoxFuture<'static, Result<Resp, BoxError>>) -> Self {
        Self {
            kind: Kind::Cached { fut },
        }
    }
}

impl<F, Resp> fmt::Debug for ResponseFuture<F, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Bypass { .. } => "bypass",
            Kind::Cached { .. } => "cached",
            Kind::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, Resp, E> Future for ResponseFuture<F, Resp>
where
    F: Future<Output = Result<Resp, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Resp, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Bypass { fut } => fut.poll(cx).map_err(Into::into),
            KindProj::Cached { fut } => fut.as_mut().poll(cx),
            KindProj::Ready { fut } => fut.poll(cx),
        }
    }
}
