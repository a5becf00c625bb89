//! The operator surface: health, readiness, Prometheus metrics (the engine's and the process's
//! own), the live-calls API with its event feed, and the `/ops` dashboard.

pub mod api;
pub mod health;
pub mod metrics;
