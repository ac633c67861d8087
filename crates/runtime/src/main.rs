//! `kinfer-runtime`: placeholder replaced by the runtime of issue 4.
fn main() {}
