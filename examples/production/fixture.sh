#!/usr/bin/env bash
# A "production" PostgreSQL database in the shape of a GUS/ApiDB instance, for database cloning.
#
#   examples/production/fixture.sh [--size small|large] [--db NAME]
#
# Connects with the usual libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD...) as a superuser
# (it creates roles and objects they own), drops the database NAME (default `toxodb_production`) and
# creates it again: idempotent. It holds what a clone must carry (schemas registered in
# core.databaseinfo, a tuning table behind a view, a data schema with an invariant across two
# tables) and what a clone must never carry (a staff schema, the workflow schema, user accounts
# in userlogins5, the production roles gus_r and gus_w with their grants).
#
# Sizes: small = a few thousand genes, large = a few million (generate_series, no files).
# Prints one line per schema with its table and row counts at the end.
set -euo pipefail

size=small
db=toxodb_production
while [ $# -gt 0 ]; do
    case "$1" in
        --size) size="${2:?--size needs small or large}"; shift 2 ;;
        --size=*) size="${1#--size=}"; shift ;;
        --db) db="${2:?--db needs a name}"; shift 2 ;;
        --db=*) db="${1#--db=}"; shift ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fixture.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$size" in
    small) genes=3000 ;;
    large) genes=3000000 ;;
    *) echo "fixture.sh: --size is small or large, not $size" >&2; exit 2 ;;
esac
if ! [[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]]; then
    echo "fixture.sh: --db must be a plain lowercase identifier, not $db" >&2
    exit 2
fi
command -v psql >/dev/null || { echo "fixture.sh: psql not found (Debian package postgresql-client)" >&2; exit 127; }

# The database to connect to while dropping and creating the fixture's.
maintenance="${FIXTURE_MAINTENANCE_DB:-postgres}"
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -d "$maintenance" "$@"; }

psql_admin <<SQL
SET client_min_messages = warning;
DROP DATABASE IF EXISTS "$db" WITH (FORCE);
-- Roles are shared by the cluster: one fixture at a time creates or alters them.
SELECT pg_advisory_lock(hashtext('vmbuild examples/production roles')) \gset
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gus_w') THEN
        CREATE ROLE gus_w LOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gus_r') THEN
        CREATE ROLE gus_r LOGIN;
    END IF;
END
\$\$;
ALTER ROLE gus_w PASSWORD 'gus-w-production-secret';
ALTER ROLE gus_r PASSWORD 'gus-r-production-secret';
SELECT pg_advisory_unlock(hashtext('vmbuild examples/production roles')) \gset
CREATE DATABASE "$db";
GRANT CONNECT, CREATE ON DATABASE "$db" TO gus_w;
GRANT CONNECT ON DATABASE "$db" TO gus_r;
SQL

psql -X -q -v ON_ERROR_STOP=1 -d "$db" -v genes="$genes" <<'SQL'
-- Everything below is owned by the production writer role, as in production.
SET ROLE gus_w;

CREATE SCHEMA core;
CREATE SCHEMA sres;
CREATE SCHEMA dots;
CREATE SCHEMA study;
CREATE SCHEMA apidb;
CREATE SCHEMA apidbtuning;
CREATE SCHEMA genes;
CREATE SCHEMA staff_jdoe;
CREATE SCHEMA workflow;
CREATE SCHEMA userlogins5;

-- The registry of the schemas the website needs, in GUS's mixed case.
CREATE TABLE core.databaseinfo (
    database_info_id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    description text,
    modification_date timestamptz NOT NULL DEFAULT now()
);
INSERT INTO core.databaseinfo (name, description) VALUES
    ('Core', 'GUS core tables'),
    ('SRes', 'shared resources: taxa, external databases'),
    ('DoTS', 'sequences'),
    ('Study', 'studies and experiments'),
    ('ApiDB', 'ApiDB application tables'),
    ('ApidbTuning', 'tuning tables built by the tuning manager'),
    ('Genes', 'gene and transcript records'),
    ('Workflow', 'the loading workflow (not for the website)');

CREATE TABLE core.algorithm (
    algorithm_id serial PRIMARY KEY,
    name text NOT NULL,
    description text
);
INSERT INTO core.algorithm (name, description) VALUES
    ('GUS::Supported::Plugin::InsertSequenceFeatures', 'load annotation'),
    ('ApiCommonData::Load::Plugin::InsertGeneAttributes', 'load gene attributes');

CREATE TABLE sres.taxon (
    taxon_id integer PRIMARY KEY,
    ncbi_tax_id integer NOT NULL,
    name text NOT NULL
);
INSERT INTO sres.taxon VALUES (1, 5811, 'Toxoplasma gondii'), (2, 508771, 'Toxoplasma gondii ME49');

CREATE TABLE sres.externaldatabase (
    external_database_id serial PRIMARY KEY,
    name text NOT NULL,
    version text NOT NULL
);
INSERT INTO sres.externaldatabase (name, version) VALUES
    ('TgondiiME49_genome_RSRC', '2020-07-21'),
    ('TgondiiME49_annotation_RSRC', '2020-07-21');

CREATE TABLE dots.nasequence (
    na_sequence_id integer PRIMARY KEY,
    source_id text NOT NULL UNIQUE,
    taxon_id integer NOT NULL REFERENCES sres.taxon,
    length integer NOT NULL
);
INSERT INTO dots.nasequence
SELECT i, 'TGME49_chr' || i, 2, 1000000 + i * 250000 FROM generate_series(1, 14) AS i;

CREATE TABLE study.study (
    study_id serial PRIMARY KEY,
    name text NOT NULL,
    external_database_id integer REFERENCES sres.externaldatabase
);
INSERT INTO study.study (name, external_database_id) VALUES
    ('ME49 tachyzoite RNA-seq', 2), ('Bradyzoite differentiation time series', 2);

CREATE TABLE apidb.instancemetainfo (
    instance_nickname text NOT NULL,
    current_updater text NULL,
    update_start timestamptz NULL,
    release text NOT NULL
);
INSERT INTO apidb.instancemetainfo VALUES ('toxoprod', NULL, NULL, '68');

-- The data schema: genes, their transcripts, and a count that must match (the invariant a
-- consistency test checks on a clone: a torn export would break it).
CREATE TABLE genes.gene (
    id bigint PRIMARY KEY,
    source_id text NOT NULL UNIQUE,
    name text,
    product text NOT NULL,
    chromosome text NOT NULL,
    start integer NOT NULL,
    stop integer NOT NULL,
    CHECK (stop >= start)
);
CREATE TABLE genes.transcript (
    id bigint PRIMARY KEY,
    gene_id bigint NOT NULL REFERENCES genes.gene,
    source_id text NOT NULL UNIQUE,
    exon_count integer NOT NULL
);
CREATE TABLE genes.gene_count (n bigint NOT NULL);

INSERT INTO genes.gene
SELECT i,
       'TGME49_' || lpad(i::text, 7, '0'),
       CASE WHEN i % 5 = 0 THEN 'GRA' || (i % 97) END,
       (ARRAY['hypothetical protein', 'dense granule protein', 'rhoptry protein',
              'microneme protein', 'ribosomal protein'])[1 + i % 5],
       'TGME49_chr' || (1 + i % 14),
       (i * 37) % 1000000,
       (i * 37) % 1000000 + 300 + i % 4000
FROM generate_series(1, :genes) AS i;
-- One transcript per gene, a second for every third gene.
INSERT INTO genes.transcript
SELECT i, i, 'TGME49_' || lpad(i::text, 7, '0') || '-t26_1', 1 + i % 9
FROM generate_series(1, :genes) AS i;
INSERT INTO genes.transcript
SELECT :genes + i, i, 'TGME49_' || lpad(i::text, 7, '0') || '-t26_2', 1 + i % 7
FROM generate_series(3, :genes, 3) AS i;
INSERT INTO genes.gene_count SELECT count(*) FROM genes.gene;

-- A tuning table built from the data, swapped in behind a view as the tuning manager does.
CREATE TABLE apidbtuning.geneattributes1234 AS
SELECT g.id AS gene_id, g.source_id, g.product, g.chromosome,
       count(t.id) AS transcript_count, sum(t.exon_count) AS exon_count
FROM genes.gene g JOIN genes.transcript t ON t.gene_id = g.id
GROUP BY g.id, g.source_id, g.product, g.chromosome;
CREATE VIEW apidbtuning.geneattributes AS SELECT * FROM apidbtuning.geneattributes1234;

-- What a clone must never carry.
CREATE TABLE staff_jdoe.scratch_blast_hits (
    query text, subject text, evalue double precision
);
INSERT INTO staff_jdoe.scratch_blast_hits
SELECT 'TGME49_' || lpad(i::text, 7, '0'), 'PF3D7_' || i, 1e-10 * i FROM generate_series(1, 50) AS i;

CREATE TABLE workflow.workflowstep (
    workflow_step_id serial PRIMARY KEY,
    name text NOT NULL,
    state text NOT NULL,
    host_machine text
);
INSERT INTO workflow.workflowstep (name, state, host_machine)
SELECT 'toxo_load_step_' || i, 'DONE', 'loadhost' || (i % 3) || '.internal.example.org'
FROM generate_series(1, 40) AS i;

CREATE TABLE userlogins5.users (
    user_id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    first_name text,
    last_name text,
    organization text,
    registration_time timestamptz NOT NULL DEFAULT now()
);
INSERT INTO userlogins5.users (email, password_hash, first_name, last_name, organization)
SELECT 'fixture.user' || i || '@example.org',
       '$2a$10$fixtureFIXTUREfixture' || md5('fixture-password-' || i),
       (ARRAY['Ada', 'Barbara', 'Charles', 'Dorothy', 'Edsger'])[1 + i % 5],
       'Fixtureperson' || i,
       'Example University'
FROM generate_series(1, 200) AS i;
CREATE TABLE userlogins5.search_history (
    user_id integer NOT NULL REFERENCES userlogins5.users,
    searched_at timestamptz NOT NULL DEFAULT now(),
    query text NOT NULL
);
INSERT INTO userlogins5.search_history (user_id, query)
SELECT 1 + i % 200, 'GenesByTextSearch: fixture private search ' || i FROM generate_series(1, 500) AS i;

-- Grants as in production: the reader may read everything the website reads.
GRANT USAGE ON SCHEMA core, sres, dots, study, apidb, apidbtuning, genes TO gus_r;
GRANT SELECT ON ALL TABLES IN SCHEMA core, sres, dots, study, apidb, apidbtuning, genes TO gus_r;
RESET ROLE;

ANALYZE;
SQL

# One line per schema: tables and rows (exact counts).
psql -X -q -v ON_ERROR_STOP=1 -d "$db" -At -F ' ' <<'SQL' | while read -r schema tables rows; do
SELECT n.nspname,
       count(c.oid),
       coalesce(sum((xpath('/row/n/text()',
           query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname),
                        false, true, '')))[1]::text::bigint), 0)
FROM pg_namespace n
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind = 'r'
WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname NOT IN ('information_schema', 'public')
GROUP BY n.nspname
ORDER BY n.nspname;
SQL
    printf '%s: schema %-12s %2s tables %10s rows\n' "$db" "$schema" "$tables" "$rows"
done
