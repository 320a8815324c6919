//! The local control plane and real LiteLLM maps for tests and xtask.
