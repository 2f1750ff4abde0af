# The recipe sketch of the design document: every block kind. `vmbuild validate`
# accepts it; plan and apply need the VM step kinds (template, database, ...).

variable "release" {
  default = "68"
}

template "base" {
  debootstrap {
    suite    = "bookworm"
    packages = ["apache2", "postgresql"]
  }

  provision "shell" {
    script = "provision/base.sh"
  }

  provision "puppet" {
    manifest = "puppet/site.pp"
  }

  disk_size = "8G"
}

database "toxo" {
  engine          = "postgres"
  source          = env("TOXO_SOURCE_URL")
  schemas         = databaseinfo("core.databaseinfo")
  exclude_schemas = ["staff_*", "workflow"]
  lock {
    name = "tuning_manager"
    wait = "10m"
  }

  into = "toxodb"
}

database "apicomm" {
  engine = "postgres"
  init   = ["schema/apicomm.sql"]
  into   = "apicomm"
}

source "website" {
  git   = "https://example.org/toxodb-site.git"
  ref   = "release-${var.release}"
  build = ["make", "install", "DESTDIR=$out"]
}

files "webservices" {
  from    = "/data/webServices/ToxoDB"
  to      = "/var/www/webServices"
  exclude = ["**/*.bam"]
}

sanitize {
  operations = ["shell-history", "ssh-host-keys", "logs", "machine-id"]
  forbid     = [env("TOXO_PASSWORD")]
}

# Software whose license forbids redistribution must not creep into the appliance.
forbid_software {
  packages = ["signalp*", "tmhmm*", "oracle-java*"]
  paths    = ["**/wublast/**"]
}

output "qcow2" {}

output "ova" {
  name = "ToxoDB-${var.release}"
}

output "vdi" {}

qa {
  http "home" {
    path          = "/"
    expect_status = 200
    expect_body   = "ToxoDB"
  }
}
