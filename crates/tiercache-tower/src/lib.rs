//! tiercache-tower (work in progress).
