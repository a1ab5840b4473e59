//! The `drivers` host library.
