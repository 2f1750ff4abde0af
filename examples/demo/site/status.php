<?php
// What is in the VM's databases, for QA: the data schemas, none of the excluded ones, and an
// empty community database.
require 'lib.php';
header('Content-Type: text/plain');
$schemas = array_column(rows('data', "SELECT nspname FROM pg_namespace
                                     WHERE nspname NOT LIKE 'pg\\_%' AND nspname NOT IN ('information_schema', 'public')
                                     ORDER BY nspname"), 'nspname');
echo "data schemas: ", implode(', ', $schemas), "\n";
$excluded = array_values(array_filter($schemas, fn($s) => $s === 'workflow' || $s === 'userlogins5' || str_starts_with($s, 'staff_')));
echo "excluded schemas present: ", $excluded ? implode(', ', $excluded) : 'none', "\n";
$roles = array_column(rows('data', "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY rolname"), 'rolname');
echo "roles: ", implode(', ', $roles), "\n";
$users = rows('community', 'SELECT count(*) AS n FROM userlogins5.users')[0]['n'];
$strategies = rows('community', 'SELECT count(*) AS n FROM userlogins5.strategies')[0]['n'];
echo "community users: $users, saved strategies: $strategies\n";
echo "site revision: ", trim(@file_get_contents(__DIR__ . '/REVISION') ?: 'unknown'), "\n";
