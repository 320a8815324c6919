//! Issue 21, tenant isolation: one team's objects cannot read, copy or overwrite another
//! team's data, nor take the operator down. One module per area.

mod common;

#[path = "tenancy/ownership.rs"]
mod ownership;
