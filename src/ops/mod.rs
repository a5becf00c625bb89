//! The operator surface: health and readiness (metrics, calls API and dashboard come later).

pub mod health;
