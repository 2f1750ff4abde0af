//! Database cloning: the production source (connect, allowlist, fingerprint, export lock), the
//! dump of an allowlist in one snapshot, and the load into the VM's own PostgreSQL.

pub mod dump;
pub mod load;
pub mod source;
