//! Two replicas sharing a Redis invalidation bus (work in progress).
fn main() {}
