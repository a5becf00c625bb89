//! The operator surface: health, readiness and the live-calls API (metrics and the dashboard
//! come later).

pub mod api;
pub mod health;
