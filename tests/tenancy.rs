//! Tenant isolation on the control plane: one operator, two or more tenant namespaces, and
//! what one tenant's objects can do to another's (issue 21). Each module is one finding of
//! the security review: a case that failed before and passes now.

mod common;

#[path = "tenancy/memory.rs"]
mod memory;

#[path = "tenancy/egress.rs"]
mod egress;

#[path = "tenancy/ownership.rs"]
mod ownership;

#[path = "tenancy/maps.rs"]
mod maps;
