//! Kestrel's guest init (PID 1). Placeholder.
fn main() {}
