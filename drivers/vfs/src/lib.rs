//! The vfs backend: every layer a full copy
