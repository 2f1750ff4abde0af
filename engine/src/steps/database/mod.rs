//! Database cloning: the production source (PostgreSQL).

pub mod source;
