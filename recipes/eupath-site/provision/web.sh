#!/bin/sh
# nginx serves /var/www/html; the site's page and documentation are layers.
set -e
rm -f /var/www/html/index.nginx-debian.html
