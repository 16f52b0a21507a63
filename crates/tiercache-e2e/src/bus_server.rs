//! A bus server of one of the three kinds the engine runs on, from the test
//! kit, that a test can pause (SIGSTOP), kill and restart on its port; and
//! connections to it.

use std::sync::Arc;

use tiercache::core::backend::Bus;
use tiercache_nats::NatsBus;
use tiercache_redis::RedisBus;
use tiercache_testkit::{NatsServer, RedisServer};

/// The JetStream stream every bus of a test reads (one per server).
const STREAM: &str = "TIERCACHE_TESTS";

/// The kind of bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// NATS core subjects.
    NatsCore,
    /// NATS with JetStream (replay after a reconnect).
    NatsJetStream,
    /// Redis pub/sub.
    RedisPubSub,
}

/// A running bus server.
pub enum BusServer {
    /// nats-server (with JetStream for [`Kind::NatsJetStream`]).
    Nats(NatsServer),
    /// redis-server.
    Redis(RedisServer),
}

impl BusServer {
    /// Starts a server for `kind` on a free loopback port.
    pub fn start(kind: Kind) -> Self {
        match kind {
            Kind::NatsCore => BusServer::Nats(NatsServer::start().unwrap()),
            Kind::NatsJetStream => BusServer::Nats(NatsServer::start_jetstream().unwrap()),
            Kind::RedisPubSub => BusServer::Redis(RedisServer::start().unwrap()),
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        match self {
            BusServer::Nats(s) => s.url(),
            BusServer::Redis(s) => s.url(),
        }
    }

    /// SIGSTOP: alive, sockets open, answering nothing.
    pub fn pause(&mut self) {
        match self {
            BusServer::Nats(s) => s.pause(),
            BusServer::Redis(s) => s.pause(),
        }
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        match self {
            BusServer::Nats(s) => s.resume(),
            BusServer::Redis(s) => s.resume(),
        }
    }

    /// SIGKILL, off the async workers.
    pub fn kill(&mut self) {
        tokio::task::block_in_place(|| match self {
            BusServer::Nats(s) => s.kill(),
            BusServer::Redis(s) => s.kill(),
        });
    }

    /// Same port, off the async workers; returns once the server is ready.
    pub fn restart(&mut self) {
        tokio::task::block_in_place(|| match self {
            BusServer::Nats(s) => s.restart().unwrap(),
            BusServer::Redis(s) => s.restart().unwrap(),
        });
    }

    /// A new bus connection, with the transport's default heartbeat (a
    /// cache asks for the pace its staleness bound needs).
    pub async fn connect(&self, kind: Kind) -> Arc<dyn Bus> {
        match kind {
            Kind::NatsCore => Arc::new(NatsBus::builder().url(self.url()).build().await.unwrap()),
            Kind::NatsJetStream => Arc::new(
                NatsBus::builder()
                    .url(self.url())
                    .jetstream(STREAM)
                    .build()
                    .await
                    .unwrap(),
            ),
            Kind::RedisPubSub => Arc::new(RedisBus::connect(self.url()).await.unwrap()),
        }
    }
}
