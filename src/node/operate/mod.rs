//! The operator's surface: the config file, tokens and auth, metrics and health, the web files.

pub mod auth;
pub mod config;
pub(crate) mod http;
pub mod metrics;
pub mod web;
