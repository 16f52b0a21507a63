//! tiercache-redis (work in progress).
