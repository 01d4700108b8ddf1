//! The contract suite every `Store` backend must pass.
