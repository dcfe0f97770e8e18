//! `cma`: the operator command line.
fn main() {}
