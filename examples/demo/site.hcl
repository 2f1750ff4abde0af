# The demo site, in the spirit of ToxoDB's VMs: Apache with PHP pages over a clone of the
# "production" database (examples/production/fixture.sh), an empty community database made by
# its installation scripts, web-service files without their BAM files, the site's settings
# rendered from a template, the image scrubbed and scanned for what must never ship, and QA
# that boots the VM and checks the site over HTTP.
#
#   TOXO_SOURCE_URL=postgres://reader:PASSWORD@db.example.org/toxodb \
#     vmbuild apply examples/demo/site.hcl          # outputs land in examples/demo/output/
#
# dev/example makes the production fixture and runs this.

variable "release" {
  default = "68"
}

# The site's code: this very repository, at its checked-in HEAD (a release tag in real life).
variable "site_repo" {
  default = "../.."
}

variable "site_ref" {
  default = "HEAD"
}

template "toxo" {
  debootstrap {
    suite    = "bookworm"
    packages = ["apache2", "libapache2-mod-php", "php-pgsql", "postgresql", "make", "openssh-server"]
  }

  kernel    = "linux-image-cloud-amd64"
  hostname  = "toxodb-demo"
  disk_size = "4G"

  provision "shell" {
    script = "provision/web.sh"
  }
}

# The data: the schemas registered in core.databaseinfo, without the workflow schema; staff
# schemas and user accounts are not registered, so they never leave production.
database "toxo" {
  engine          = "postgres"
  source          = env("TOXO_SOURCE_URL")
  schemas         = databaseinfo("core.databaseinfo")
  exclude_schemas = ["staff_*", "workflow"]
  fingerprint     = "SELECT release FROM apidb.instancemetainfo"

  lock {
    name = "tuning_manager"
    wait = "5m"
  }

  into = "toxodb"
  role = "toxo_web"
}

# The community database: empty, from its installation scripts; never cloned.
database "apicomm" {
  engine = "postgres"
  init   = ["apicomm/01-userlogins.sql", "apicomm/02-config.sql"]
  into   = "apicomm"
  role   = "comm_web"
}

source "site" {
  git   = var.site_repo
  ref   = var.site_ref
  build = ["make", "-C", "examples/demo/site", "install", "DESTDIR=$out"]
}

files "webservices" {
  from    = "webservices"
  to      = "/var/www/webservices"
  exclude = ["**/*.bam"]
}

config "site" {
  template = "conf/site.ini.tmpl"
  to       = "/etc/toxodemo/site.ini"
  owner    = "root:www-data"
  values   = { site = "ToxoDB demo" }
}

sanitize {
  operations   = ["shell-history", "ssh-host-keys", "logs", "machine-id", "apt-cache", "provisioning-leftovers", "tmp-files"]
  forbid       = [env("TOXO_SOURCE_URL")]
  forbid_files = ["forbidden.txt"]
}

output "qcow2" {
  compress = true
}

output "ova" {
  name   = "ToxoDB-demo-${var.release}"
  memory = "1G"
}

qa {
  timeout = "5m"
  formats = ["qcow2"]

  http "home" {
    path        = "/"
    expect_body = "3000 genes"
  }

  http "gene-page" {
    path        = "/gene.php?id=TGME49_0000001"
    expect_body = "dense granule protein"
  }

  http "search" {
    path        = "/search.php?q=rhoptry"
    expect_body = "600 genes found"
  }

  http "excluded-schemas" {
    path        = "/status.php"
    expect_body = "excluded schemas present: none"
    reject_body = "workflow"
  }

  http "empty-community-database" {
    path        = "/status.php"
    expect_body = "community users: 0, saved strategies: 0"
  }

  http "webservices" {
    path        = "/webservices/ToxoDB/release-68/README.txt"
    expect_body = "BAM alignments are not shipped"
  }

  http "no-bam-files" {
    path          = "/webservices/ToxoDB/release-68/bam/ME49_tachyzoite_rep1.bam"
    expect_status = 404
  }

  command "postgresql" {
    run           = "systemctl is-active postgresql@15-main"
    expect_output = "active"
  }

  command "ssh-host-keys-made-at-first-boot" {
    run           = "ls /etc/ssh/ssh_host_ed25519_key.pub"
    expect_output = "ssh_host_ed25519_key.pub"
  }
}
