//! Streaming, hostile-input-safe application of OCI layer tars
