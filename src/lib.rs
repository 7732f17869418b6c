//! Gatehouse: a reverse proxy and edge gateway.
//!
//! Data flows one way: a validated `config::Config`, with the files it names read by `load`, is
//! compiled into a `state::RuntimeState` snapshot, and the request path (`listener` -> `http` ->
//! `routing` -> `upstream`) reads it.
//! `docs/lifecycle.md` tells the life of a request.

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod app;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error_pages;
pub mod fds;
pub mod files;
pub mod h1;
pub mod http;
pub mod listener;
pub mod load;
pub mod metrics;
pub mod middleware;
pub mod read_notice;
pub mod reload;
pub mod request_id;
pub mod routing;
pub mod state;
pub mod template;
pub mod tls;
pub mod upstream;

pub use app::{check, run, AppError};
