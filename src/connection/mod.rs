//! Connection management: keeps a receiving socket for every topic at every
//! moment it can, and accounts for every moment it could not. `backoff` is the
//! retry policy, `session` one socket, `supervisor` the shards and their
//! transitions.

pub mod backoff;
pub mod session;
pub mod supervisor;
