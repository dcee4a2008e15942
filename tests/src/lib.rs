//! Cross-crate end-to-end tests live here.
