//! publishd: werf's image publish procedure (tag with meta-information
//! labels, push, untag) as a durable HTTP service. See ARCHITECTURE.md.

pub mod access;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod credentials;
pub mod domain;
pub mod engine;
pub mod metrics;
pub mod progress;
pub mod registry;
pub mod retention;
pub mod server;
pub mod startup;
pub mod store;
pub mod webhooks;
pub mod worker;
