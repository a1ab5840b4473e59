//! A layer's changes against its parent, and the OCI layer tar that carries them
