"""Rate limits: token buckets per client address and per application, kept in Redis (`limiter`, `lua/`)."""
