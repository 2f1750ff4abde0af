# A small Debian VM serving a page with nginx: the template is bootstrapped,
# provisioned, assembled into a bootable disk, converted to qcow2 and OVA, and
# booted by QA, which checks the page over HTTP.

variable "release" { default = "1" }

template "web" {
  debootstrap {
    suite    = "bookworm"
    packages = ["nginx-light"]
  }
  kernel   = "linux-image-cloud-amd64"
  hostname = "vmbuild-demo"

  provision "shell" {
    script = "provision/site.sh"
  }

  provision "shell" {
    inline = ["echo 'release ${var.release}' > /var/www/html/release.txt"]
  }

  disk_size = "3G"
}
