//! Helpers shared by the root crate's tests.
#![allow(dead_code)]

pub mod bus_server;
pub mod postgres;
