# Every site from one module: ToxoDB and PlasmoDB, each its own VM, from recipes/eupath-site.
# Their template (debootstrap, system, provisioning) and shared documentation are the same
# steps and are built once; each site costs only its own page, host name, disk and outputs.
#
#   vmbuild apply examples/sites/site.hcl    # output/site/toxodb/, output/site/plasmodb/

module "site" {
  for_each = {
    toxodb   = "ToxoDB"
    plasmodb = "PlasmoDB"
  }

  source = "../../recipes/eupath-site"
  site   = each.key
  title  = each.value
}
