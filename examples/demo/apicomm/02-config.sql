-- Settings the site reads at start-up.
CREATE TABLE userlogins5.config (
    key text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO userlogins5.config VALUES ('schema_version', '5'), ('registration', 'closed');
