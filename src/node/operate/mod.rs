//! The operator's surface: the config file, tokens and auth, metrics and health, the web files.

pub(crate) mod auth;
pub mod config;
pub(crate) mod http;
pub(crate) mod jwks;
pub mod jwt;
pub(crate) mod metrics;
pub(crate) mod web;
