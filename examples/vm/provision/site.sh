#!/bin/sh
# The page the VM serves.
set -e
cat > /var/www/html/index.html <<'HTML'
<!doctype html>
<title>vmbuild demo</title>
<h1>Hello from a VM built by vmbuild</h1>
HTML
