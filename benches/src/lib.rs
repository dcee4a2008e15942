//! Cross-crate benchmarks live here.
