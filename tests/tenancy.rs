//! Tenant isolation (issue 21) on the control plane: two tenant namespaces whose identities
//! have only a team's rights, and what one team can do to another through the operator.

mod common;

#[path = "tenancy/maps.rs"]
mod maps;
