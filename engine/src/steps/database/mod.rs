//! Database cloning: the production source (connect, allowlist, fingerprint, export lock), the
//! dump of an allowlist in one snapshot, and the load into the VM's own PostgreSQL; and the two
//! step kinds made of them, `pg_dump` (`database.NAME.dump`, one per cloned database; with the
//! cargo feature `oracle`, `oracle_dump` for an Oracle source, see [`oracle`]) and `pg_load`
//! (`database.load`, every database of the recipe in the VM's one cluster). `tls` gives both
//! the source's own connections and `pg_dump` libpq's meaning of `sslmode`.

pub mod dump;
pub mod dump_step;
pub mod load;
pub mod load_step;
pub mod oracle;
pub mod source;
pub mod tls;

/// The file of a database step's output that says what it did, read by the load step and
/// carried by the build manifest.
pub const REPORT_FILE: &str = crate::exec::export::STEP_REPORT;

/// Run a future to completion on a runtime of its own, in a thread of its own: plan-time
/// resolution is synchronous and may be called from inside or outside a runtime.
pub(crate) fn block_on<F>(future: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime starts")
                    .block_on(future)
            })
            .join()
            .expect("resolving a database does not panic")
    })
}
