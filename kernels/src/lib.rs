//! Kernel specs and the kernel cache.
