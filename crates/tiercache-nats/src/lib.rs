//! tiercache-nats (work in progress).
