//! tiercache-testkit (work in progress).
