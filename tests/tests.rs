//! The integration tests: every one runs the real `vmbuild` binary against real recipes, a real
//! store in a temporary folder, and real commands.

mod support;

mod book;
mod caching;
mod ci;
mod cli;
mod config;
mod crash;
mod data_http;
mod databases;
mod demo;
mod diagnostics;
mod diff;
mod e2e;
mod files;
mod forbid_software;
mod modules;
mod parallel;
mod remote;
mod remote_harness;
mod sanitize;
mod secrets;
mod source;
