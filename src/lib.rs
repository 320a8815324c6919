//! costmap-operator: keeps LiteLLM's model cost map current in every proxy.
//!
//! One sync is a pipeline of pure stages, each a module with plain unit tests:
//! [`fetch`] -> [`validate`] -> [`diff`] -> [`render`]; only [`controller`] talks to the
//! Kubernetes API.

pub mod agent;
pub mod api;
pub mod check;
pub mod conditions;
pub mod consumers;
pub mod controller;
pub mod diff;
pub mod digest;
pub mod fetch;
pub mod heap;
pub mod leader;
pub mod locks;
pub mod map_cache;
pub mod metrics;
pub mod render;
pub mod schedule;
pub mod scope;
pub mod serve;
pub mod server;
pub mod validate;
pub mod watch;
