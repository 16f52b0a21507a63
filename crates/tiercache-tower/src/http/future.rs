use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue, Response};
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::CacheBody;
use super::response::CACHE_STATUS;

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
        Bypass {
            #[pin] fut: F,
            tags_header: HeaderName,
            own_targeted: Option<HeaderName>,
            status: HeaderValue,
        },
        // A cache lookup (and maybe a load).
        Cached { fut: BoxFuture<'static, Result<Response<CacheBody<B>>, E>> },
        // Answered inside `call` (a local hit).
        Ready { #[pin] fut: std::future::Ready<Result<Response<CacheBody<B>>, E>> },
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(super) fn bypass(
        fut: F,
        tags_header: HeaderName,
        own_targeted: Option<HeaderName>,
        status: HeaderValue,
    ) -> Self {
        Self {
            kind: Kind::Bypass {
                fut,
                tags_header,
                own_targeted,
                status,
            },
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
            KindProj::Bypass {
                fut,
                tags_header,
                own_targeted,
                status,
            } => fut.poll(cx).map_ok(|mut resp| {
                let h = resp.headers_mut();
                h.remove(&*tags_header);
                if let Some(own) = own_targeted.as_ref() {
                    h.remove(own);
                }
                h.insert(CACHE_STATUS, status.clone());
                resp.map(CacheBody::inner)
            }),
            KindProj::Cached { fut } => fut.as_mut().poll(cx),
            KindProj::Ready { fut } => fut.poll(cx),
        }
    }
}
