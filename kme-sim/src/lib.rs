//! ETSI GS QKD 014 KME pair simulator: one QKD link, i.e. two KMEs sharing one key stream,
//! each serving the ETSI key delivery API over mutually authenticated HTTPS to its own SAEs.
//!
//! The `qkd-kme-sim` binary runs it as a service; [`TestLink`] runs it inside a test.

pub mod admin;
pub mod certs;
pub mod config;
pub mod deviations;
pub mod etsi;
pub mod keystore;
pub mod link;
pub mod listeners;
pub mod server;
pub mod testlink;
pub mod tls;

pub use admin::AdminCommand;
pub use config::{ServeConfig, SimOptions};
pub use server::Simulator;
pub use testlink::TestLink;
