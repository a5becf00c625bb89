//! Security suite (issue 13): every way in is admitted, every lookup is scoped to its tenant,
//! nothing is fetched where it should not be, and no hostile input takes down more than its own
//! request. One test binary with a module per concern; the database-backed tests run on SQLite
//! and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod crosstenant;
mod egress;
mod fuzz;
mod hostile;
mod ingress;
mod ops;
mod worker_isolation;
