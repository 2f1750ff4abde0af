-- The community database's schema, as the infrastructure team's installation script creates it:
-- user accounts and saved strategies, with no rows. Nothing here comes from production.
CREATE SCHEMA userlogins5;

CREATE TABLE userlogins5.users (
    user_id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    first_name text,
    last_name text,
    organization text,
    registration_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE userlogins5.strategies (
    strategy_id serial PRIMARY KEY,
    user_id integer NOT NULL REFERENCES userlogins5.users,
    name text NOT NULL,
    saved boolean NOT NULL DEFAULT false,
    definition jsonb NOT NULL
);

CREATE TABLE userlogins5.search_history (
    user_id integer NOT NULL REFERENCES userlogins5.users,
    searched_at timestamptz NOT NULL DEFAULT now(),
    query text NOT NULL
);
