# A small Debian VM serving a page with nginx. The template is bootstrapped and
# provisioned, assembled into a disk that boots by itself, converted to qcow2
# and to an OVA for VMware and VirtualBox, and QA boots both and checks the page.
#
#   vmbuild apply examples/vm/site.hcl      # outputs land in examples/vm/output/

variable "release" {
  default = "1"
}

template "web" {
  debootstrap {
    suite    = "bookworm"
    packages = ["nginx-light"]
  }

  kernel    = "linux-image-cloud-amd64"
  hostname  = "vmbuild-demo"
  disk_size = "3G"

  provision "shell" {
    script = "provision/site.sh"
  }

  provision "shell" {
    inline = ["echo 'release ${var.release}' > /var/www/html/release.txt"]
  }
}

# A layer: this step's output goes into the VM at /var/www/html.
step "build-info" {
  command = ["sh", "-c", "echo 'built by vmbuild, release ${var.release}' > $VMBUILD_OUT/build-info.txt"]
  into    = "/var/www/html"
}

output "qcow2" {
  compress = true
}

output "ova" {
  name   = "vmbuild-demo-${var.release}"
  cpus   = 1
  memory = "1G"
}

qa {
  timeout = "5m"
  formats = ["qcow2", "ova"]

  http "home" {
    path          = "/"
    expect_status = 200
    expect_body   = "Hello from a VM built by vmbuild"
  }

  http "release" {
    path        = "/release.txt"
    expect_body = "release ${var.release}"
  }

  http "layer" {
    path        = "/build-info.txt"
    expect_body = "built by vmbuild"
  }

  command "hostname" {
    run           = "cat /etc/hostname"
    expect_output = "vmbuild-demo"
  }
}
