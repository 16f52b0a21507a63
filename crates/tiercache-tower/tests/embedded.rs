//! The rule suite against the in-process shared tier and bus (a fresh pair
//! per test).
#![allow(missing_docs)]

#[macro_use]
mod common;

macro_rules! embedded {
    ($($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                common::$name(common::Env::embedded()).await;
            }
        )*
    };
}

with_rules!(embedded);

#[test]
fn every_rule_is_listed() {
    assert_eq!(common::all().len(), 23);
}

/// The RFC conformance table (issue 12), every case at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rfc_conformance() {
    common::rfc::run(common::Env::embedded()).await;
}
