use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::CacheBody;
use super::layer::Config;
use super::response::CACHE_STATUS;
use super::serve::STATUS_BYPASS;

pin_project! {
    /// The response future of [`HttpCache`](super::HttpCache).
    pub struct ResponseFuture<F, B, E>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E>
    where
        B: Body,
    {
        // Not cacheable (method, authorization): the inner future, with the
        // tags header stripped from its response.
        // The layer's settings behind one pointer: every variant of this
        // future is moved with it, a local hit's too.
        Bypass { #[pin] fut: F, config: Arc<Config> },
        // A cache lookup (and maybe a load).
        Cached { fut: BoxFuture<'static, Result<Response<CacheBody<B>>, E>> },
        // Answered inside `call` (a local hit).
        Ready { #[pin] fut: std::future::Ready<Result<Response<CacheBody<B>>, E>> },
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(super) fn bypass(fut: F, config: Arc<Config>) -> Self {
        Self {
            kind: Kind::Bypass { fut, config },
        }
    }

    pub(super) fn ready(resp: Response<CacheBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                fut: std::future::ready(Ok(resp)),
            },
        }
    }

    pub(super) fn cached(fut: BoxFuture<'static, Result<Response<CacheBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Cached { fut },
        }
    }
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
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

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Bypass { fut, config } => fut.poll(cx).map_ok(|mut resp| {
                let h = resp.headers_mut();
                h.remove(&config.tags_header);
                if let Some(own) = &config.own_targeted {
                    h.remove(own);
                }
                h.insert(CACHE_STATUS, STATUS_BYPASS);
                resp.map(CacheBody::inner)
            }),
            KindProj::Cached { fut } => fut.as_mut().poll(cx),
            KindProj::Ready { fut } => fut.poll(cx),
        }
    }
}
