//! tiercache-sidecar (work in progress).
