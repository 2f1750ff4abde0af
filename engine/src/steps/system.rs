//! The `system` kind: the template's own settings applied to its root tree: host name, network
//! by DHCP on the first interface, a default user, a serial console, OS updates, and an empty
//! machine id (each VM makes its own at first boot).

use std::collections::BTreeMap;

use serde_json::json;

use super::chroot::Chroot;
use super::tree::{copy_tree, replace_file};
use super::{io_error, ResolveContext, Resolved, RunContext, Step, StepFuture};
use crate::diag::Diagnostic;
use crate::recipe::{Named, TemplateBlock, UserBlock};

pub struct SystemStep {
    id: String,
    after: Vec<String>,
    hostname: String,
    user: Option<UserBlock>,
    updates: bool,
    network: String,
}

impl SystemStep {
    pub fn new(template: &Named<TemplateBlock>, base: &str) -> SystemStep {
        let block = &template.block;
        SystemStep {
            id: format!("template.{}.system", template.name),
            after: vec![base.to_string()],
            hostname: block
                .hostname
                .clone()
                .unwrap_or_else(|| template.name.clone()),
            user: block.user.clone(),
            updates: block.updates,
            network: block.network.clone().unwrap_or_else(|| "dhcp".into()),
        }
    }
}

impl Step for SystemStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "system"
    }

    fn version(&self) -> u32 {
        1
    }

    fn depends_on(&self) -> &[String] {
        &self.after
    }

    fn params(&self) -> serde_json::Value {
        json!({
            "hostname": self.hostname,
            "user": self.user,
            "updates": self.updates,
            "network": self.network,
        })
    }

    fn resolve(&self, _ctx: &ResolveContext) -> Result<Resolved, Diagnostic> {
        Ok(Resolved::default())
    }

    fn run(&self, ctx: RunContext) -> StepFuture<'_> {
        Box::pin(async move {
            let base = ctx
                .upstream
                .values()
                .next()
                .cloned()
                .expect("the system step follows the bootstrap");
            copy_tree(&base, &ctx.out)?;
            let root = &ctx.out;
            replace_file(
                &root.join("etc/hostname"),
                format!("{}\n", self.hostname).as_bytes(),
            )?;
            replace_file(
                &root.join("etc/hosts"),
                format!(
                    "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                    self.hostname
                )
                .as_bytes(),
            )?;
            if self.network == "dhcp" {
                // The kernel is booted with net.ifnames=0, so the first interface is eth0 under
                // every hypervisor.
                replace_file(
                    &root.join("etc/network/interfaces"),
                    b"# written by vmbuild: DHCP on the first interface\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n",
                )?;
            }
            // A console on the first serial port: QA reads the boot from it.
            let wants = root.join("etc/systemd/system/getty.target.wants");
            std::fs::create_dir_all(&wants).map_err(io_error("create", &wants))?;
            let getty = wants.join("serial-getty@ttyS0.service");
            let _ = std::fs::remove_file(&getty);
            std::os::unix::fs::symlink("/lib/systemd/system/serial-getty@.service", &getty)
                .map_err(io_error("link", &getty))?;
            // Each VM makes its own machine id at first boot.
            replace_file(&root.join("etc/machine-id"), b"")?;
            let _ = std::fs::remove_file(root.join("var/lib/dbus/machine-id"));

            let chroot = Chroot::enter(root)?;
            let env = BTreeMap::new();
            // GRUB is installed into the disk image by vmbuild, not by grub-pc's scripts.
            chroot
                .run(
                    "sh",
                    &[
                        "-c",
                        "printf 'grub-pc grub-pc/install_devices multiselect \\ngrub-pc grub-pc/install_devices_empty boolean true\\n' | debconf-set-selections",
                    ],
                    env.clone(),
                    &ctx,
                )
                .await?;
            if let Some(user) = &self.user {
                let mut args = vec!["-m", "-s", "/bin/bash"];
                let groups = user.groups.join(",");
                if !groups.is_empty() {
                    args.extend(["-G", groups.as_str()]);
                }
                args.push(user.name.as_str());
                chroot.run("useradd", &args, env.clone(), &ctx).await?;
                if !user.ssh_authorized_keys.is_empty() {
                    let home = root.join("home").join(&user.name);
                    let keys = format!("{}\n", user.ssh_authorized_keys.join("\n"));
                    replace_file(&home.join(".ssh/authorized_keys"), keys.as_bytes())?;
                    let owner = format!("{}:{}", user.name, user.name);
                    chroot
                        .run(
                            "chown",
                            &["-R", &owner, &format!("/home/{}/.ssh", user.name)],
                            env.clone(),
                            &ctx,
                        )
                        .await?;
                    chroot
                        .run(
                            "chmod",
                            &["700", &format!("/home/{}/.ssh", user.name)],
                            env.clone(),
                            &ctx,
                        )
                        .await?;
                }
            }
            if self.updates {
                chroot
                    .run(
                        "sh",
                        &["-c", "apt-get update && apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade && apt-get clean"],
                        env.clone(),
                        &ctx,
                    )
                    .await?;
            }
            chroot.leave()?;
            Ok(())
        })
    }
}
