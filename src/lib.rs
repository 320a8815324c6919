//! costmap-operator: keeps LiteLLM's model cost map current in every proxy.
//!
//! One sync is a pipeline of pure stages in [`sync`], each a module with plain unit tests:
//! fetch -> validate (structure rules, then the guards against the last good map) -> diff
//! -> render the ConfigMap, decided by the schedule.
//!
//! Modules that talk to the Kubernetes API: [`controller`] (the only writer: ConfigMaps,
//! status, Events, workloads), [`http::map_cache`] (watches ConfigMaps and ModelCostMapSyncs
//! to serve maps), [`leader`] (the Lease), [`agent`] (only with `--verify-with`: it watches
//! one ModelCostMapSync) and [`watch`] (the watch they share). Everything else is pure or
//! talks plain HTTP: [`litellm`] to LiteLLM's admin API, [`http`] to proxies fetching maps.

pub mod agent;
pub mod api;
pub mod apiserver;
pub mod bounded;
pub mod cli;
pub mod controller;
pub mod digest;
pub mod heap;
pub mod http;
pub mod layout;
pub mod leader;
pub mod litellm;
pub mod locks;
pub mod memo;
pub mod metrics;
pub mod scope;
pub mod sync;
pub mod watch;
