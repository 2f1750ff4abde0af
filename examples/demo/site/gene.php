<?php
require 'lib.php';
$id = $_GET['id'] ?? '';
$gene = rows('data', 'SELECT g.source_id, g.name, g.product, g.chromosome, g.start, g.stop, a.transcript_count, a.exon_count
                       FROM genes.gene g LEFT JOIN apidbtuning.geneattributes a ON a.gene_id = g.id
                       WHERE g.source_id = $1', [$id]);
if (!$gene) {
    http_response_code(404);
    page_start('No such gene');
    echo "<p>No gene ", h($id), ".</p>\n";
    page_end();
    exit;
}
$g = $gene[0];
page_start($g['source_id']);
echo "<h1>Gene ", h($g['source_id']), "</h1>\n<dl>\n";
foreach (['name' => 'Name', 'product' => 'Product', 'chromosome' => 'Chromosome'] as $key => $label) {
    echo "<dt>$label</dt><dd>", h($g[$key] ?? '-'), "</dd>\n";
}
echo "<dt>Location</dt><dd>", h($g['start']), "..", h($g['stop']), "</dd>\n";
echo "<dt>Transcripts</dt><dd>", h($g['transcript_count']), " (", h($g['exon_count']), " exons)</dd>\n</dl>\n";
echo "<h2>Transcripts</h2>\n<ul>\n";
foreach (rows('data', 'SELECT t.source_id, t.exon_count FROM genes.transcript t JOIN genes.gene g ON g.id = t.gene_id
                        WHERE g.source_id = $1 ORDER BY t.source_id', [$id]) as $t) {
    echo "<li>", h($t['source_id']), ": ", h($t['exon_count']), " exons</li>\n";
}
echo "</ul>\n";
page_end();
