//! `EmbeddedStore`: the key tree, usage and change feed in one redb file, for a single node.

/// Placeholder until the embedded backend lands.
#[derive(Debug)]
pub struct EmbeddedStore;
