//! The overlay2 backend: kernel overlayfs over per-layer directories
