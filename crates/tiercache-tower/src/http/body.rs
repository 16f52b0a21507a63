//! The response body of [`HttpCache`](super::HttpCache).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response from [`HttpCache`](super::HttpCache): a cached
    /// body (shared [`Bytes`], not copied), the inner service's own body, or
    /// (a response too large to cache) the bytes already read followed by the
    /// rest of the inner body.
    ///
    /// Implements [`http_body::Body`] with `Data = Bytes` and the inner body's
    /// error, so axum, hyper and tonic accept it as it is.
    pub struct CacheBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Full { data: Option<Bytes> },
        Inner { #[pin] body: B },
        Replay {
            read: VecDeque<Frame<Bytes>>,
            error: Option<B::Error>,
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B: Body> CacheBody<B> {
    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
        }
    }

    /// The inner service's body, as it is.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// The frames already read, then (unless it failed) the rest of `rest`.
    pub(crate) fn replay(
        read: VecDeque<Frame<Bytes>>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        Self {
            kind: Kind::Replay { read, error, rest },
        }
    }
}

impl<B: Body> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full { data } => f
                .debug_struct("CacheBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Inner { .. } => f.write_str("CacheBody::Inner"),
            Kind::Replay { read, .. } => f
                .debug_struct("CacheBody::Replay")
                .field("frames_read", &read.len())
                .finish(),
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Replay { read, error, rest } => {
                if let Some(frame) = read.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(e) = error.take() {
                    *rest = None;
                    return Poll::Ready(Some(Err(e)));
                }
                match rest {
                    Some(body) => {
                        let polled = body.as_mut().poll_frame(cx);
                        if let Poll::Ready(None) = polled {
                            *rest = None;
                        }
                        polled
                    }
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Replay { read, error, rest } => {
                read.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Replay { read, rest, .. } => {
                let done: u64 = read
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.remaining() as u64))
                    .sum();
                let rest = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(done + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(done + upper);
                }
                hint
            }
        }
    }
}

/// What reading a body up to a limit gave.
pub(crate) enum Collected<B: Body> {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Too large, trailers, or a read error: a body that replays what was
    /// read and goes on with the rest.
    Partial(CacheBody<B>),
}

/// Reads `body` whole if it fits in `limit` bytes and has no trailers.
pub(crate) async fn collect_limited<B>(body: B, limit: usize) -> Collected<B>
where
    B: Body<Data = Bytes>,
{
    if body.size_hint().lower() > limit as u64 {
        return Collected::Partial(CacheBody::inner(body));
    }
    let mut body = Box::pin(body);
    let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut total = 0usize;
    loop {
        match futures::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => break,
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => {
                    total += data.len();
                    read.push_back(frame);
                    if total > limit {
                        return Collected::Partial(CacheBody::replay(read, None, Some(body)));
                    }
                }
                None => {
                    // Trailers: not cached; pass them and what follows on.
                    read.push_back(frame);
                    return Collected::Partial(CacheBody::replay(read, None, Some(body)));
                }
            },
            Some(Err(e)) => return Collected::Partial(CacheBody::replay(read, Some(e), None)),
        }
    }
    let bytes = match read.len() {
        0 => Bytes::new(),
        1 => read
            .pop_front()
            .and_then(|f| f.into_data().ok())
            .unwrap_or_default(),
        _ => {
            let mut buf = Vec::with_capacity(total);
            for f in read {
                if let Some(d) = f.data_ref() {
                    buf.extend_from_slice(d);
                }
            }
            Bytes::from(buf)
        }
    };
    Collected::Complete(bytes)
}
