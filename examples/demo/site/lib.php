<?php
// The site's settings (rendered by vmbuild's `config "site"` block) and its databases.
function settings() {
    static $settings = null;
    if ($settings === null) {
        $settings = parse_ini_file('/etc/toxodemo/site.ini', true, INI_SCANNER_RAW);
        if ($settings === false) {
            http_response_code(500);
            exit("cannot read /etc/toxodemo/site.ini\n");
        }
    }
    return $settings;
}

function db($which) {
    static $connections = [];
    if (!isset($connections[$which])) {
        $s = settings()[$which];
        $connections[$which] = pg_connect(sprintf(
            "host=%s port=%s dbname=%s user=%s password=%s",
            $s['host'], $s['port'], $s['name'], $s['user'], $s['password']
        ));
        if (!$connections[$which]) {
            http_response_code(503);
            exit("the $which database does not answer\n");
        }
    }
    return $connections[$which];
}

function rows($which, $sql, $params = []) {
    $result = pg_query_params(db($which), $sql, $params);
    return $result ? pg_fetch_all($result) ?: [] : [];
}

function h($text) {
    return htmlspecialchars((string) $text, ENT_QUOTES);
}

function page_start($title) {
    $site = settings()['site'];
    echo "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>", h($title), " - ", h($site['name']), "</title>";
    echo "<link rel=\"stylesheet\" href=\"style.css\"></head><body>\n";
    echo "<header><a href=\"index.php\">", h($site['name']), "</a> release ", h($site['release']), "</header>\n<main>\n";
}

function page_end() {
    echo "</main></body></html>\n";
}
