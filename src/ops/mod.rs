//! The operator surface: health, readiness, Prometheus metrics and the live-calls API (the
//! dashboard comes later).

pub mod api;
pub mod health;
pub mod metrics;
