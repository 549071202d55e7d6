//! Criterion benchmarks of zc; see the `[[bench]]` targets.
