#!/bin/sh
# Apache for the demo site: PHP pages at /, the web-service files at /webservices/.
set -e
cat > /etc/apache2/sites-available/toxodemo.conf <<'CONF'
<VirtualHost *:80>
    DocumentRoot /var/www/toxodemo
    DirectoryIndex index.php
    <Directory /var/www/toxodemo>
        Require all granted
    </Directory>
    Alias /webservices/ /var/www/webservices/
    <Directory /var/www/webservices>
        Options +Indexes
        Require all granted
    </Directory>
    ErrorLog ${APACHE_LOG_DIR}/error.log
    CustomLog ${APACHE_LOG_DIR}/access.log combined
</VirtualHost>
CONF
a2dissite -q 000-default
a2ensite -q toxodemo
# The site's settings are readable by Apache's user only (they hold the database passwords).
install -d -m 0750 -o root -g www-data /etc/toxodemo
