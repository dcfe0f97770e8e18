//! Security tests for the isolate backend.
