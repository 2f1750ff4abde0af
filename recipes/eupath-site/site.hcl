# The common shape of a EuPathDB-style site's VM, as a module: one instance per site.
#
#   module "toxodb" {
#     source = "../recipes/eupath-site"
#     site   = "toxodb"
#     title  = "ToxoDB"
#   }
#
# What does not depend on the site (the template and its provisioning, the shared
# documentation) has the same key in every instance, and is built once for all of them.

variable "site" {
  description = "the site's short name: its host name and the name of its VM image"
}

variable "title" {
  description = "the site's name, shown on its home page"
}

variable "release" {
  default = "68"
}

template "web" {
  debootstrap {
    suite    = "bookworm"
    packages = ["nginx-light"]
  }

  kernel    = "linux-image-cloud-amd64"
  hostname  = "eupath-vm"
  disk_size = "3G"

  provision "shell" {
    script = "provision/web.sh"
  }
}

# The site's own page: a layer of its VM.
step "home" {
  command = ["sh", "-c", "printf '<!doctype html>\\n<title>%s</title>\\n<h1>%s</h1>\\n<p>release %s</p>\\n' \"$TITLE\" \"$TITLE\" \"$RELEASE\" > $VMBUILD_OUT/index.html"]
  env     = { TITLE = var.title, RELEASE = var.release }
  into    = "/var/www/html"
}

# Documentation every site ships: the same layer, copied once.
files "docs" {
  from = "docs"
  to   = "/var/www/html/docs"
}

# The site's host name.
config "hostname" {
  template = "provision/hostname.tmpl"
  to       = "/etc/hostname"
}

output "qcow2" {
  name     = var.site
  compress = true
}

qa {
  timeout = "5m"

  http "home" {
    path        = "/"
    expect_body = "<h1>${var.title}</h1>"
  }

  http "docs" {
    path        = "/docs/README.txt"
    expect_body = "EuPathDB"
  }

  command "hostname" {
    run           = "cat /etc/hostname"
    expect_output = var.site
  }
}
