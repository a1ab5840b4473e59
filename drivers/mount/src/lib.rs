//! Performs and undoes the mounts backends describe
