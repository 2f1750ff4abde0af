# A small recipe of generic steps: it shows how vmbuild plans, caches and runs,
# with nothing to install. `vmbuild apply examples/hello/site.hcl` twice: the
# second run has nothing to do.

variable "release" {
  default     = "68"
  description = "The release being assembled"
}

locals {
  site = "ToxoDB"
}

step "notes" {
  description = "Release notes from the files in notes/"
  command     = ["sh", "-c", "cat notes/*.txt > $VMBUILD_OUT/notes.txt"]
  inputs      = ["notes/*.txt"]
}

step "banner" {
  description = "A banner naming the site and release"
  command     = ["sh", "-c", "echo \"${local.site} release ${var.release}\" > $VMBUILD_OUT/banner.txt"]
}

step "page" {
  description = "An index page made of both"
  command     = [
    "sh",
    "-c",
    "{ cat $VMBUILD_IN_BANNER/banner.txt; echo; cat $VMBUILD_IN_NOTES/notes.txt; } > $VMBUILD_OUT/index.txt",
  ]
  after = [step.banner, step.notes]
}
