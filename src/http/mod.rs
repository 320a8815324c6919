//! Serving maps over HTTP: [`maps`] answers one map request (the operator's endpoint and the
//! agent use it alike), [`map_cache`] holds the maps the operator serves, [`server`] is the
//! operator's HTTP server (maps, metrics, health, readiness); [`access`] and [`capability`]
//! decide who may read them.

pub mod access;
pub mod capability;
pub mod map_cache;
pub mod maps;
pub mod server;
