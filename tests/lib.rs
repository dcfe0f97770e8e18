//! Shared fixtures for the cross-crate tests in this directory.
#![forbid(unsafe_code)]
