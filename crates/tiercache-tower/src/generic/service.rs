use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::channel::oneshot;
use tiercache_core::Entry;
use tower_service::Service;

use super::future::ResponseFuture;
use super::layer::Settings;
use crate::BoxError;

/// The service of [`CacheLayer`](super::CacheLayer): looks a request's key
/// up in the cache and calls the inner service on a miss.
pub struct CacheService<S, Resp, K> {
    inner: S,
    settings: Arc<Settings<Resp, K>>,
}

impl<S: Clone, Resp, K> Clone for CacheService<S, Resp, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<S: fmt::Debug, Resp, K> fmt::Debug for CacheService<S, Resp, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("cache", &self.settings.cache)
            .finish()
    }
}

impl<S, Resp, K> CacheService<S, Resp, K> {
    pub(super) fn new(inner: S, settings: Arc<Settings<Resp, K>>) -> Self {
        Self { inner, settings }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<Resp, K> Settings<Resp, K> {
    fn entry(&self, resp: Resp) -> Entry<Resp> {
        let mut entry = Entry::new(resp);
        if let Some(tags) = &self.tags {
            entry.tags = tags(&entry.value);
        }
        if let Some(negative) = &self.negative
            && negative(&entry.value)
        {
            entry.ttl = Some(self.negative_ttl);
        }
        entry
    }
}

/// What waiters of a failed call see as the engine's `Error::Load` source.
#[derive(Debug)]
struct ServiceFailed(String);

impl fmt::Display for ServiceFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inner service failed: {}", self.0)
    }
}

impl std::error::Error for ServiceFailed {}

impl<S, Req, Resp, K> Service<Req> for CacheService<S, Resp, K>
where
    S: Service<Req, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    Req: Send + 'static,
    Resp: Clone + Send + Sync + 'static,
    K: Fn(&Req) -> Option<String> + Send + Sync + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.settings.key)(&req) else {
            return ResponseFuture::bypass(self.inner.call(req));
        };
        // A fresh local hit is answered here: no service clone, no boxed
        // future.
        if let Some(Some(resp)) = self
            .settings
            .cache
            .with_local(&key, |hit| hit.value.map(|v| Resp::clone(v)))
        {
            return ResponseFuture::ready(resp);
        }
        // The ready service is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::cached(Box::pin(lookup(
            Arc::clone(&self.settings),
            inner,
            req,
            key,
        )))
    }
}

async fn lookup<S, Req, Resp, K>(
    settings: Arc<Settings<Resp, K>>,
    mut svc: S,
    req: Req,
    key: String,
) -> Result<Resp, BoxError>
where
    S: Service<Req, Response = Resp> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    Req: Send + 'static,
    Resp: Clone + Send + Sync + 'static,
    K: Send + Sync + 'static,
{
    // The request stays here unless this caller leads the load, so a caller
    // the cache cannot answer can still call the service itself.
    let mut slot = Some(req);
    // Made only when this caller leads a load: a hit allocates no channel.
    let mut own_rx: Option<oneshot::Receiver<BoxError>> = None;
    let fetched = settings
        .cache
        .fetch(&key, || {
            let (tx, rx) = oneshot::channel();
            own_rx = Some(rx);
            let call = slot.take().map(|req| svc.call(req));
            let settings = Arc::clone(&settings);
            async move {
                let Some(call) = call else {
                    return Err(ServiceFailed("request already taken".into()));
                };
                match call.await {
                    Ok(resp) => Ok(Some(settings.entry(resp))),
                    Err(e) => {
                        let e: BoxError = e.into();
                        let failed = ServiceFailed(e.to_string());
                        // The caller that led this load gets its own error.
                        let _ = tx.send(e);
                        Err(failed)
                    }
                }
            }
        })
        .await;
    match fetched {
        Ok(f) => match f.value {
            Some(v) => Ok(Resp::clone(&v)),
            // Not from this layer's loads (a Bloom guard, another writer's
            // negative entry): ask the service.
            None => match slot.take() {
                Some(req) => svc.call(req).await.map_err(Into::into),
                None => Err(Box::new(ServiceFailed("no response cached".into()))),
            },
        },
        Err(e) => match own_rx.and_then(|mut rx| rx.try_recv().ok().flatten()) {
            Some(own) => Err(own),
            None => Err(Box::new(e)),
        },
    }
}
