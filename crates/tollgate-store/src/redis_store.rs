//! `RedisStore`: the key tree, usage and change feed in Redis (single server or Cluster), for many nodes.
