//! Tenant isolation (issue 21), on a real kube-apiserver: what one team's objects cannot do
//! to another team's data or to the operator.

mod common;

#[path = "tenancy/egress.rs"]
mod egress;
