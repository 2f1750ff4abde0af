<?php
require 'lib.php';
page_start('Home');
$count = rows('data', 'SELECT count(*) AS n FROM genes.gene')[0]['n'];
$release = rows('data', 'SELECT release FROM apidb.instancemetainfo')[0]['release'];
$organism = rows('data', 'SELECT name FROM sres.taxon ORDER BY taxon_id DESC LIMIT 1')[0]['name'];
echo "<h1>", h(settings()['site']['name']), "</h1>\n";
echo "<p>Genes of <i>", h($organism), "</i>: <b id=\"genes\">", h($count), " genes</b>, data release ", h($release), ".</p>\n";
echo "<form action=\"search.php\"><input name=\"q\" placeholder=\"rhoptry\"> <button>Search genes</button></form>\n";
page_end();
