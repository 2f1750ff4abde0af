//! The SQL and PL/SQL vmbuild sends to an Oracle source, in one place: the allowlist and
//! fingerprint, the export locks, the SCN, the data dictionary, the rows at that SCN, Data Pump,
//! and reading its files back over the connection.
//!
//! Only dictionary names (quoted) and bind variables reach these texts, never recipe text
//! unchecked: the registry name is checked to be `SCHEMA.TABLE` of plain identifiers; the
//! fingerprint query is the recipe's own SELECT, run in a read-only transaction.

/// An Oracle identifier as the dictionary stores it, double-quoted (so `APIDB` is `"APIDB"`).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every user (schema) the connected user can see.
pub const ALL_USERS: &str = "SELECT username FROM all_users";

/// Makes the transaction read-only: plan's queries run in one.
pub const READ_ONLY: &str = "SET TRANSACTION READ ONLY";

/// Why a registry name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not SCHEMA.TABLE of plain names")]
pub struct BadRegistry(pub String);

/// A plain Oracle identifier: a letter, then letters, digits, `_`, `$`, `#`.
fn plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '#'))
        && name.len() <= 128
}

/// `SELECT "NAME" FROM "CORE"."DATABASEINFO"` for `registry = "core.databaseinfo"`,
/// `column = "name"`: Oracle keeps unquoted names upper-case.
pub fn registry_query(registry: &str, column: &str) -> Result<String, BadRegistry> {
    let bad = || BadRegistry(registry.to_string());
    let (schema, table) = registry.split_once('.').ok_or_else(bad)?;
    if !plain_identifier(schema) || !plain_identifier(table) {
        return Err(bad());
    }
    if !plain_identifier(column) {
        return Err(BadRegistry(column.to_string()));
    }
    Ok(format!(
        "SELECT {} FROM {}.{}",
        quote(&column.to_ascii_uppercase()),
        quote(&schema.to_ascii_uppercase()),
        quote(&table.to_ascii_uppercase())
    ))
}

/// The recipe's fingerprint query as an inline view, on lines of its own so that a trailing
/// `-- comment` comments out nothing of ours.
pub fn fingerprint_query(query: &str) -> String {
    let query = query.trim().trim_end_matches(';');
    format!("SELECT * FROM (\n{query}\n)")
}

/// The current SCN: every row is read, counted and exported as of it.
pub const CURRENT_SCN: &str = "SELECT DBMS_FLASHBACK.GET_SYSTEM_CHANGE_NUMBER FROM DUAL";

// ---- The named lock: DBMS_LOCK, an exclusive user lock held by the session.

/// A lock handle for a name (`ALLOCATE_UNIQUE` commits).
pub const LOCK_ALLOCATE: &str =
    "BEGIN DBMS_LOCK.ALLOCATE_UNIQUE(lockname => :name, lockhandle => :handle); END;";

/// Ask for the lock in exclusive mode, waiting at most `:timeout` seconds; it stays held across
/// commits, until released or the session ends.
pub const LOCK_REQUEST: &str = "BEGIN :result := DBMS_LOCK.REQUEST(lockhandle => :handle, \
     lockmode => DBMS_LOCK.X_MODE, timeout => :timeout, release_on_commit => FALSE); END;";

pub const LOCK_RELEASE: &str = "BEGIN :result := DBMS_LOCK.RELEASE(lockhandle => :handle); END;";

/// Who holds the user lock named `:name`: needs SELECT on `V$LOCK`, `V$SESSION` and
/// `SYS.DBMS_LOCK_ALLOCATED` (e.g. `SELECT_CATALOG_ROLE`).
pub const LOCK_HOLDER: &str = "SELECT s.sid || ',' || s.serial#, s.username, s.osuser, \
     s.machine, s.program, TO_CHAR(SYSDATE - l.ctime / 86400, 'YYYY-MM-DD HH24:MI:SS') \
     FROM v$lock l JOIN v$session s ON s.sid = l.sid \
     JOIN sys.dbms_lock_allocated a ON a.lockid = l.id1 \
     WHERE l.type = 'UL' AND l.lmode = 6 AND a.name = :name";

/// What `DBMS_LOCK.REQUEST` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAnswer {
    Granted,
    Timeout,
    Deadlock,
    ParameterError,
    /// This session holds it already.
    AlreadyOwned,
    IllegalHandle,
    Other(i64),
}

impl LockAnswer {
    pub fn from_code(code: i64) -> LockAnswer {
        match code {
            0 => LockAnswer::Granted,
            1 => LockAnswer::Timeout,
            2 => LockAnswer::Deadlock,
            3 => LockAnswer::ParameterError,
            4 => LockAnswer::AlreadyOwned,
            5 => LockAnswer::IllegalHandle,
            n => LockAnswer::Other(n),
        }
    }
}

/// Why a lock name is refused by DBMS_LOCK.
pub fn check_lock_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.len() > 128 {
        Err("is longer than 128 bytes (DBMS_LOCK's limit)")
    } else if name.to_ascii_uppercase().starts_with("ORA$") {
        Err("starts with ORA$, which Oracle reserves")
    } else {
        Ok(())
    }
}

// ---- The tuning manager's claim on apidb.InstanceMetaInfo (committed, so any session sees it).

pub const CLAIM_TABLE: &str = "apidb.InstanceMetaInfo";

pub const CLAIM: &str = "UPDATE apidb.InstanceMetaInfo SET current_updater = :holder, \
     update_start = SYSDATE WHERE current_updater IS NULL";

pub const CLAIM_HOLDER: &str = "SELECT current_updater, \
     NVL(TO_CHAR(update_start, 'YYYY-MM-DD HH24:MI:SS'), 'an unknown time') \
     FROM apidb.InstanceMetaInfo WHERE current_updater IS NOT NULL AND ROWNUM = 1";

pub const CLAIM_ROWS: &str = "SELECT COUNT(*) FROM apidb.InstanceMetaInfo";

pub const UNCLAIM: &str = "UPDATE apidb.InstanceMetaInfo SET current_updater = NULL, \
     update_start = NULL WHERE current_updater = :holder";

// ---- The data dictionary of one schema (`:owner`).

/// Tables with rows of their own: not temporary, nested, secondary, external, an IOT's
/// overflow, in the recycle bin, or a Data Pump job's master table of vmbuild's.
pub const TABLES: &str = "SELECT t.table_name FROM all_tables t \
     WHERE t.owner = :owner AND t.temporary = 'N' AND t.nested = 'NO' AND t.secondary = 'N' \
       AND (t.iot_type IS NULL OR t.iot_type = 'IOT') AND t.dropped = 'NO' \
       AND t.table_name NOT LIKE 'VMBUILD\\_EXPORT\\_%' ESCAPE '\\' \
       AND NOT EXISTS (SELECT 1 FROM all_external_tables e \
                       WHERE e.owner = t.owner AND e.table_name = t.table_name) \
     ORDER BY t.table_name";

pub const COLUMNS: &str = "SELECT table_name, column_name, data_type, data_length, \
     data_precision, data_scale, char_length, nullable, data_default \
     FROM all_tab_columns WHERE owner = :owner ORDER BY table_name, column_id";

pub const TABLE_COMMENTS: &str = "SELECT table_name, comments FROM all_tab_comments \
     WHERE owner = :owner AND table_type = 'TABLE' AND comments IS NOT NULL";

pub const COLUMN_COMMENTS: &str = "SELECT table_name, column_name, comments \
     FROM all_col_comments WHERE owner = :owner AND comments IS NOT NULL";

pub const CONSTRAINTS: &str = "SELECT table_name, constraint_name, constraint_type, status, \
     validated, r_owner, r_constraint_name, delete_rule, search_condition, index_name \
     FROM all_constraints WHERE owner = :owner AND constraint_type IN ('P', 'U', 'R', 'C') \
     ORDER BY table_name, constraint_name";

/// The columns of every constraint of `:owner`, and of those its foreign keys reference.
pub const CONSTRAINT_COLUMNS: &str = "SELECT owner, constraint_name, table_name, column_name \
     FROM all_cons_columns WHERE owner = :owner ORDER BY owner, constraint_name, position";

/// The table and columns of a referenced key (`:owner`, `:name`), for a foreign key whose
/// target is in another schema.
pub const REFERENCED_KEY: &str = "SELECT table_name, column_name FROM all_cons_columns \
     WHERE owner = :owner AND constraint_name = :name ORDER BY position";

pub const INDEXES: &str = "SELECT table_name, index_name, index_type, uniqueness \
     FROM all_indexes WHERE owner = :owner AND table_owner = :owner \
     ORDER BY table_name, index_name";

pub const INDEX_COLUMNS: &str = "SELECT index_name, column_position, column_name, descend \
     FROM all_ind_columns WHERE index_owner = :owner ORDER BY index_name, column_position";

pub const INDEX_EXPRESSIONS: &str = "SELECT index_name, column_position, column_expression \
     FROM all_ind_expressions WHERE index_owner = :owner";

pub const VIEWS: &str =
    "SELECT view_name, text FROM all_views WHERE owner = :owner ORDER BY view_name";

/// Sequences, but not those of identity columns (`ISEQ$$_...`).
pub const SEQUENCES: &str = "SELECT sequence_name, TO_CHAR(increment_by), TO_CHAR(min_value), \
     TO_CHAR(max_value), TO_CHAR(last_number), cycle_flag FROM all_sequences \
     WHERE sequence_owner = :owner AND sequence_name NOT LIKE 'ISEQ$$%' ORDER BY sequence_name";

/// The rows of a table as of the export's SCN (`:scn`).
pub fn select_rows(schema: &str, table: &str, columns: &[&str]) -> String {
    let list: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    format!(
        "SELECT {} FROM {}.{} AS OF SCN :scn",
        list.join(", "),
        quote(schema),
        quote(table)
    )
}

/// How many rows a table had at the export's SCN (`:scn`).
pub fn count_rows(schema: &str, table: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM {}.{} AS OF SCN :scn",
        quote(schema),
        quote(table)
    )
}

// ---- Data Pump.

/// Data Pump's `SCHEMA_LIST` filter value: `'APIDB','CORE'`.
pub fn schema_list(schemas: &[String]) -> Result<String, String> {
    let mut out = Vec::new();
    for s in schemas {
        if s.contains('\'') {
            return Err(s.clone());
        }
        out.push(format!("'{s}'"));
    }
    Ok(out.join(","))
}

/// Define and start a schema-mode export job (`:job`) of `:schema_list` at `:scn` into
/// `:dump_file` and `:log_file` of the directory object `:directory`; `:handle` is the job's
/// handle in this session. A job that cannot be defined is stopped (and so deleted).
pub const DATAPUMP_START: &str = "DECLARE
    h NUMBER;
BEGIN
    h := DBMS_DATAPUMP.OPEN(operation => 'EXPORT', job_mode => 'SCHEMA', job_name => :job);
    BEGIN
        DBMS_DATAPUMP.ADD_FILE(handle => h, filename => :dump_file, directory => :directory,
            filetype => DBMS_DATAPUMP.KU$_FILE_TYPE_DUMP_FILE, reusefile => 1);
        DBMS_DATAPUMP.ADD_FILE(handle => h, filename => :log_file, directory => :directory,
            filetype => DBMS_DATAPUMP.KU$_FILE_TYPE_LOG_FILE, reusefile => 1);
        DBMS_DATAPUMP.METADATA_FILTER(handle => h, name => 'SCHEMA_LIST', value => :schema_list);
        DBMS_DATAPUMP.SET_PARAMETER(handle => h, name => 'FLASHBACK_SCN', value => :scn);
        DBMS_DATAPUMP.START_JOB(handle => h);
    EXCEPTION WHEN OTHERS THEN
        DBMS_DATAPUMP.STOP_JOB(handle => h, immediate => 1, keep_master => 0);
        RAISE;
    END;
    :handle := h;
END;";

/// Wait at most `:timeout` seconds for news of the job `:handle`: its `:state` (`EXECUTING`,
/// `COMPLETED`, `STOPPED`...), `:percent` done, and the text of new errors, if any.
pub const DATAPUMP_STATUS: &str = "DECLARE
    state VARCHAR2(30);
    status ku$_Status;
    errors VARCHAR2(32767);
    i NUMBER;
BEGIN
    DBMS_DATAPUMP.GET_STATUS(handle => :handle,
        mask => DBMS_DATAPUMP.KU$_STATUS_JOB_ERROR + DBMS_DATAPUMP.KU$_STATUS_JOB_STATUS,
        timeout => :timeout, job_state => state, status => status);
    :state := state;
    :percent := NULL;
    IF BITAND(status.mask, DBMS_DATAPUMP.KU$_STATUS_JOB_STATUS) != 0 THEN
        :percent := status.job_status.percent_done;
    END IF;
    IF BITAND(status.mask, DBMS_DATAPUMP.KU$_STATUS_JOB_ERROR) != 0 AND status.error IS NOT NULL THEN
        i := status.error.FIRST;
        WHILE i IS NOT NULL LOOP
            errors := SUBSTR(errors || status.error(i).LogText || CHR(10), 1, 32000);
            i := status.error.NEXT(i);
        END LOOP;
    END IF;
    :errors := errors;
END;";

/// Let go of a finished job.
pub const DATAPUMP_DETACH: &str = "BEGIN DBMS_DATAPUMP.DETACH(handle => :handle); END;";

/// Stop the job `:job` of the connected user at once and drop its master table: on failure or
/// Ctrl-C, from any session of that user.
pub const DATAPUMP_STOP: &str = "DECLARE
    h NUMBER;
BEGIN
    h := DBMS_DATAPUMP.ATTACH(job_name => :job, job_owner => USER);
    DBMS_DATAPUMP.STOP_JOB(handle => h, immediate => 1, keep_master => 0);
END;";

/// The size of `:name` in the directory object `:directory`, read through a BFILE.
pub const FILE_LENGTH: &str = "DECLARE
    f BFILE := BFILENAME(:directory, :name);
BEGIN
    DBMS_LOB.FILEOPEN(f, DBMS_LOB.FILE_READONLY);
    :length := DBMS_LOB.GETLENGTH(f);
    DBMS_LOB.FILECLOSE(f);
END;";

/// The largest piece one `DBMS_LOB.READ` into a PL/SQL `RAW` returns.
pub const FILE_PIECE: u32 = 32767;

/// Read `:amount` bytes (at most [`FILE_PIECE`]) of the file at `:offset` (from 1) into
/// `:data`; `:got` says how many came.
pub const FILE_READ: &str = "DECLARE
    f BFILE := BFILENAME(:directory, :name);
    amount INTEGER := :amount;
    buffer RAW(32767);
BEGIN
    DBMS_LOB.FILEOPEN(f, DBMS_LOB.FILE_READONLY);
    DBMS_LOB.READ(f, amount, :offset, buffer);
    DBMS_LOB.FILECLOSE(f);
    :got := amount;
    :data := buffer;
END;";

/// Remove a file of the directory object once copied (needs EXECUTE on UTL_FILE).
pub const FILE_REMOVE: &str =
    "BEGIN UTL_FILE.FREMOVE(location => :directory, filename => :name); END;";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_read_with_upper_case_quoted_names() {
        assert_eq!(
            registry_query("core.databaseinfo", "name").unwrap(),
            "SELECT \"NAME\" FROM \"CORE\".\"DATABASEINFO\""
        );
        for bad in [
            "core",
            "core.x; DROP TABLE y",
            "a.b.c",
            ".x",
            "core.\"x\"",
            "1a.b",
        ] {
            assert!(registry_query(bad, "name").is_err(), "{bad}");
        }
        assert!(registry_query("core.databaseinfo", "name) --").is_err());
    }

    #[test]
    fn the_fingerprint_query_is_an_inline_view() {
        assert_eq!(
            fingerprint_query("SELECT release FROM apidb.instancemetainfo; "),
            "SELECT * FROM (\nSELECT release FROM apidb.instancemetainfo\n)"
        );
        assert!(fingerprint_query("SELECT 1 FROM dual -- the count").ends_with("count\n)"));
    }

    #[test]
    fn the_named_lock_is_exclusive_and_survives_commits() {
        assert!(LOCK_ALLOCATE
            .contains("DBMS_LOCK.ALLOCATE_UNIQUE(lockname => :name, lockhandle => :handle)"));
        assert!(LOCK_REQUEST.contains("lockmode => DBMS_LOCK.X_MODE"));
        assert!(LOCK_REQUEST.contains("timeout => :timeout"));
        assert!(LOCK_REQUEST.contains("release_on_commit => FALSE"));
        assert!(LOCK_RELEASE.contains("DBMS_LOCK.RELEASE(lockhandle => :handle)"));
        assert!(LOCK_HOLDER.contains("l.type = 'UL' AND l.lmode = 6"));
        assert_eq!(LockAnswer::from_code(0), LockAnswer::Granted);
        assert_eq!(LockAnswer::from_code(1), LockAnswer::Timeout);
        assert_eq!(LockAnswer::from_code(4), LockAnswer::AlreadyOwned);
        assert_eq!(LockAnswer::from_code(9), LockAnswer::Other(9));
        assert!(check_lock_name("toxo-export").is_ok());
        assert!(check_lock_name("ora$x").is_err());
        assert!(check_lock_name(&"x".repeat(129)).is_err());
        assert!(check_lock_name("").is_err());
    }

    #[test]
    fn the_tuning_manager_claim_is_the_postgres_statement_with_sysdate() {
        assert_eq!(
            CLAIM,
            "UPDATE apidb.InstanceMetaInfo SET current_updater = :holder, update_start = SYSDATE WHERE current_updater IS NULL"
        );
        assert_eq!(
            UNCLAIM,
            "UPDATE apidb.InstanceMetaInfo SET current_updater = NULL, update_start = NULL WHERE current_updater = :holder"
        );
        assert!(CLAIM_HOLDER.contains("WHERE current_updater IS NOT NULL AND ROWNUM = 1"));
    }

    #[test]
    fn rows_and_counts_are_read_as_of_the_scn() {
        assert_eq!(
            select_rows("APIDB", "INSTANCEMETAINFO", &["RELEASE", "USER"]),
            "SELECT \"RELEASE\", \"USER\" FROM \"APIDB\".\"INSTANCEMETAINFO\" AS OF SCN :scn"
        );
        assert_eq!(
            count_rows("DOTS", "NASEQUENCE"),
            "SELECT COUNT(*) FROM \"DOTS\".\"NASEQUENCE\" AS OF SCN :scn"
        );
        assert_eq!(quote("A\"B"), "\"A\"\"B\"");
    }

    #[test]
    fn data_pump_exports_the_schema_list_at_the_scn() {
        assert_eq!(
            schema_list(&["APIDB".into(), "CORE".into()]).unwrap(),
            "'APIDB','CORE'"
        );
        assert_eq!(schema_list(&["O'X".into()]), Err("O'X".to_string()));
        assert!(DATAPUMP_START
            .contains("DBMS_DATAPUMP.OPEN(operation => 'EXPORT', job_mode => 'SCHEMA'"));
        assert!(DATAPUMP_START.contains("name => 'SCHEMA_LIST', value => :schema_list"));
        assert!(DATAPUMP_START.contains("name => 'FLASHBACK_SCN', value => :scn"));
        assert!(DATAPUMP_STOP.contains("keep_master => 0"));
        assert!(TABLES.contains("NOT LIKE 'VMBUILD\\_EXPORT\\_%' ESCAPE '\\'"));
    }
}
