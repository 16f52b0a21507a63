pub use tiercache_core as core;
