<?php
require 'lib.php';
$q = trim($_GET['q'] ?? '');
page_start('Search');
$found = $q === '' ? [] : rows('data', "SELECT source_id, product FROM genes.gene
                                      WHERE product ILIKE '%' || $1 || '%' OR source_id ILIKE $1 || '%' OR name ILIKE $1
                                      ORDER BY source_id LIMIT 20", [$q]);
$total = $q === '' ? 0 : rows('data', "SELECT count(*) AS n FROM genes.gene
                                      WHERE product ILIKE '%' || $1 || '%' OR source_id ILIKE $1 || '%' OR name ILIKE $1", [$q])[0]['n'];
echo "<h1>Genes matching ", h($q), "</h1>\n<p>", h($total), " genes found.</p>\n<ul>\n";
foreach ($found as $g) {
    echo "<li><a href=\"gene.php?id=", h(urlencode($g['source_id'])), "\">", h($g['source_id']), "</a> ", h($g['product']), "</li>\n";
}
echo "</ul>\n";
page_end();
