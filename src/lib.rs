//! costmap-operator: keeps LiteLLM's model cost map current in every proxy.

pub mod fetch;
