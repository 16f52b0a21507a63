//! tiercache's consistency tests against real servers, and their support
//! code. Not published; test support, so it panics (`unwrap`) on any
//! failure to set a server up.
//!
//! The tests (`tests/`): `bus_hang` (hung buses), `bus_outage` (a bus
//! killed between a write and a read), `leases` (two OS processes, one
//! origin load), `consistency` and `nemesis` (randomized checkers). They
//! start their own redis-server, nats-server and Postgres through
//! `tiercache-testkit`. The nemesis also runs for as long as asked as an
//! example:
//!
//! ```text
//! cargo run --release -p tiercache-e2e --example nemesis -- --secs 600 --source logical
//! ```
#![allow(clippy::unwrap_used, clippy::panic)]
#![deny(unreachable_pub)]

pub mod bus_server;
pub mod nemesis;
pub mod postgres;
