//! `cargo xtask`: Kestrel's workflow.
fn main() {}
