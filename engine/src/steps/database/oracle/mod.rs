//! Oracle sources: a `database` with `engine = "oracle"` becomes `database.NAME.dump` of kind
//! `oracle_dump`, which exports the allowlisted schemas at one SCN with Data Pump (an archive
//! for Oracle sites) and converts them into a PostgreSQL `dump.sql` for the VM, which cannot
//! carry an Oracle (licensed software).
//!
//! The pure parts are always built and tested: the source string ([`connect`]), the type
//! mapping and COPY encoding ([`types`]), the conversion ([`convert`]) and the SQL sent to
//! Oracle ([`sql`]). What talks to Oracle ([`session`], [`export`]) is built with the cargo
//! feature `oracle`, through the `oracle` crate (ODPI-C; Oracle's client libraries are loaded
//! when a connection is first made, not when vmbuild is built).

pub mod connect;
pub mod convert;
#[cfg(feature = "oracle")]
pub mod export;
#[cfg(test)]
pub(crate) mod fixture;
#[cfg(all(test, feature = "oracle"))]
mod live_tests;
#[cfg(test)]
mod postgres_tests;
#[cfg(feature = "oracle")]
pub mod session;
pub mod sql;
pub mod types;
