//! costmap-operator: keeps LiteLLM's model cost map current in every proxy.
//!
//! One sync is a pipeline of pure stages in [`sync`], each a module with plain unit tests:
//! fetch -> validate (structure rules, then the guards against the last good map) -> diff,
//! decided by the schedule; [`layout`] is how a map is stored in ConfigMaps (rendered,
//! split in chunks, read back), shared by the one writer and every reader.
//!
//! Modules that talk to the Kubernetes API: [`controller`] (the only writer: ConfigMaps,
//! status, Events, workloads; one sync core for both kinds), [`http::map_cache`] (watches
//! ConfigMaps and the objects of both kinds to serve maps), [`leader`] (the Lease),
//! [`agent`] (only with `--verify-with`: it watches one ModelCostMapSync), [`watch`] (the
//! watch they share) and [`apiserver`] (the conventions of every call: field manager,
//! whole-second times, error messages). Everything else is pure or talks plain HTTP:
//! [`litellm`] to LiteLLM's admin API, [`http`] to proxies fetching maps, [`cli`] the
//! commands beside the operator.

pub mod agent;
pub mod api;
pub mod apiserver;
pub mod bounded;
pub mod budget;
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
pub mod own_addresses;
pub mod scope;
pub mod sync;
pub mod watch;
