//! DWBase node: an agent-memory store with an HTTP API over sled.
//!
//! Speaks the original DWBase node's JSON and config keys and fixes its faults: ids are unique
//! forever (ULIDs checked against the store), every write is durable before it is acknowledged
//! (group-committed flushes), refusals have meaningful status codes and JSON bodies, limits are
//! enforced, a non-loopback listener needs an API key, and SIGTERM drains and flushes.
//!
//! Entry points:
//! - [`cli::main`] / [`cli::run`] with [`cli::NodeArgs`]: the `dwbase-node` program.
//! - [`config::Config::load`] / [`config::Config::from_toml_str`]: the config parser.
//! - [`node::Node::open`] + [`server::serve`]: run a node in-process (tests, embedding).
//! - [`metrics::METRIC_NAMES`]: the exported metric names.

pub mod api;
pub mod cli;
pub mod config;
pub mod connections;
pub mod crypto;
pub mod disk;
pub mod error;
pub mod health;
pub mod index;
pub mod legacy;
pub mod limits;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod node;
pub mod server;
pub mod snapshot;
pub mod storage;
pub mod swarm;
pub mod term;
pub mod tls;

pub use config::Config;
pub use node::Node;
pub use server::serve;
