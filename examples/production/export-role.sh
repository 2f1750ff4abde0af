#!/usr/bin/env bash
# The role vmbuild clones the fixture with, as a production site would grant it: it may read the
# schemas the website needs and claim the tuning manager's row, nothing else (no superuser, no
# access to the staff, workflow or user schemas).
#
#   examples/production/export-role.sh --db NAME --role NAME   (password on standard input)
#
# Connects with the usual libpq variables as a superuser. Idempotent: the role is created, or its
# password set again, and its grants made again.
set -euo pipefail

db=toxodb_production
role=toxo_export
while [ $# -gt 0 ]; do
    case "$1" in
        --db) db="${2:?--db needs a name}"; shift 2 ;;
        --role) role="${2:?--role needs a name}"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "export-role.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
for name in "$db" "$role"; do
    if ! [[ "$name" =~ ^[a-z_][a-z0-9_]*$ ]]; then
        echo "export-role.sh: names must be plain lowercase identifiers, not $name" >&2
        exit 2
    fi
done
IFS= read -r password
[ -n "$password" ] || { echo "export-role.sh: no password on standard input" >&2; exit 2; }

# The password travels as a psql variable (never on a command line).
psql -X -q -v ON_ERROR_STOP=1 -d "$db" -v role="$role" -v password="$password" <<'SQL'
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') AS missing \gset
\if :missing
CREATE ROLE :"role" LOGIN;
\endif
ALTER ROLE :"role" LOGIN NOSUPERUSER PASSWORD :'password';
SELECT current_database() AS db \gset
GRANT CONNECT ON DATABASE :"db" TO :"role";
GRANT USAGE ON SCHEMA core, sres, dots, study, apidb, apidbtuning, genes TO :"role";
GRANT SELECT ON ALL TABLES IN SCHEMA core, sres, dots, study, apidb, apidbtuning, genes TO :"role";
GRANT SELECT ON ALL SEQUENCES IN SCHEMA core, sres, dots, study, apidb, apidbtuning, genes TO :"role";
-- The tuning manager's lock: claiming and releasing its row.
GRANT UPDATE (current_updater, update_start) ON apidb.instancemetainfo TO :"role";
SQL
