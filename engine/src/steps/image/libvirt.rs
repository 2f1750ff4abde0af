//! The libvirt side: a domain XML that boots the qcow2 (virtio disk and network, serial
//! console, QEMU guest agent channel), and defining it in a running libvirt daemon through the
//! `virt` crate (feature `libvirt`).

use std::path::Path;

use super::{xml_escape, ImageError, VmSpec};

/// How libvirt runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// Hardware virtualisation (`/dev/kvm`); the guest sees the host's CPU.
    Kvm,
    /// Emulation (TCG), where KVM is not available.
    Qemu,
}

impl DomainType {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }
}

/// A domain that boots `qcow2` (made absolute) on a BIOS `pc` machine. The network interface
/// joins libvirt's `default` network, so the host reaches the guest's services by its address.
pub fn libvirt_domain_xml(spec: &VmSpec, qcow2: &Path, domain_type: DomainType) -> String {
    let source = std::path::absolute(qcow2).unwrap_or_else(|_| qcow2.to_path_buf());
    let description = spec
        .description
        .as_deref()
        .map(|d| format!("  <description>{}</description>\n", xml_escape(d)))
        .unwrap_or_default();
    let cpu = match domain_type {
        DomainType::Kvm => "  <cpu mode='host-passthrough'/>\n",
        DomainType::Qemu => "",
    };
    format!(
        r#"<domain type='{domain_type}'>
  <name>{name}</name>
{description}  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="{osinfo}"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='MiB'>{memory}</memory>
  <currentMemory unit='MiB'>{memory}</currentMemory>
  <vcpu placement='static'>{cpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
{cpu}  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{source}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <graphics type='vnc' autoport='yes'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video>
      <model type='vga'/>
    </video>
    <memballoon model='virtio'/>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
  </devices>
</domain>
"#,
        domain_type = domain_type.as_str(),
        name = xml_escape(&spec.name),
        osinfo = spec.os.libosinfo_id(),
        memory = spec.memory_mib,
        cpus = spec.cpus,
        source = xml_escape(&source.to_string_lossy()),
    )
}

/// Define (not start) the domain `xml` in the libvirt daemon at `uri` (`qemu:///system`,
/// `qemu:///session`...); returns the domain's name. Defining over an existing domain of the
/// same name and UUID updates it, as `virsh define` does.
#[cfg(feature = "libvirt")]
pub fn define_libvirt_domain(uri: &str, xml: &str) -> Result<String, ImageError> {
    let failed = |action: String| {
        move |e: virt::error::Error| ImageError::Libvirt {
            action,
            message: e.to_string(),
        }
    };
    // Errors are returned, not also printed on stderr by libvirt's default handler.
    virt::error::clear_error_callback();
    // The connection closes when dropped.
    let conn =
        virt::connect::Connect::open(Some(uri)).map_err(failed(format!("connect to `{uri}`")))?;
    let result = conn
        .define_domain_xml(xml)
        .map_err(failed(format!("define a domain at `{uri}`")))
        .and_then(|domain| {
            domain
                .name()
                .map_err(failed("read the defined domain's name".into()))
        });
    drop(conn);
    result
}

/// Without the `libvirt` feature there is no libvirt client to define domains with.
#[cfg(not(feature = "libvirt"))]
pub fn define_libvirt_domain(_uri: &str, _xml: &str) -> Result<String, ImageError> {
    Err(ImageError::LibvirtUnavailable)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::spec;
    use super::*;

    fn has_program(name: &str) -> bool {
        crate::steps::process::find_program(name, Path::new("/")).is_some()
    }

    #[test]
    fn domain_xml_has_the_devices() {
        let spec = spec("ToxoDB-68");
        let xml = libvirt_domain_xml(&spec, Path::new("/var/lib/x/disk.qcow2"), DomainType::Kvm);
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let root = doc.root_element();
        assert_eq!(root.attribute("type"), Some("kvm"));
        let find = |name: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name(name))
                .unwrap_or_else(|| panic!("no <{name}>"))
        };
        assert_eq!(find("name").text(), Some("ToxoDB-68"));
        assert_eq!(find("memory").text(), Some("2048"));
        assert_eq!(find("vcpu").text(), Some("2"));
        let os_type = find("type");
        assert_eq!(os_type.attribute("arch"), Some("x86_64"));
        assert_eq!(os_type.attribute("machine"), Some("pc"));
        assert_eq!(os_type.text(), Some("hvm"));
        assert_eq!(find("boot").attribute("dev"), Some("hd"));
        let disk = find("disk");
        assert_eq!(disk.attribute("type"), Some("file"));
        fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> roxmltree::Node<'a, 'i> {
            node.children().find(|n| n.has_tag_name(name)).unwrap()
        }
        assert_eq!(child(disk, "driver").attribute("type"), Some("qcow2"));
        assert_eq!(
            child(disk, "source").attribute("file"),
            Some("/var/lib/x/disk.qcow2")
        );
        assert_eq!(child(disk, "target").attribute("bus"), Some("virtio"));
        assert_eq!(
            child(find("interface"), "model").attribute("type"),
            Some("virtio")
        );
        assert_eq!(find("serial").attribute("type"), Some("pty"));
        assert_eq!(find("console").attribute("type"), Some("pty"));
        let channel = find("channel");
        assert_eq!(
            child(channel, "target").attribute("name"),
            Some("org.qemu.guest_agent.0")
        );
        assert_eq!(find("description").text(), spec.description.as_deref());

        let emulated = libvirt_domain_xml(&spec, Path::new("rel.qcow2"), DomainType::Qemu);
        assert!(emulated.starts_with("<domain type='qemu'>"));
        assert!(!emulated.contains("host-passthrough"));
        let expected = std::env::current_dir().unwrap().join("rel.qcow2");
        assert!(emulated.contains(&format!("file='{}'", expected.display())));
    }

    #[test]
    fn domain_xml_passes_virt_xml_validate() {
        if !has_program("virt-xml-validate") {
            eprintln!("note: virt-xml-validate is not installed (package libvirt-clients); not validating");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (domain_type, description) in [(DomainType::Kvm, true), (DomainType::Qemu, false)] {
            let mut spec = spec("ToxoDB-68");
            if !description {
                spec.description = None;
            }
            let xml = libvirt_domain_xml(&spec, &dir.path().join("disk.qcow2"), domain_type);
            let file = dir.path().join("domain.xml");
            std::fs::write(&file, &xml).unwrap();
            let output = std::process::Command::new("virt-xml-validate")
                .arg(&file)
                .arg("domain")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "virt-xml-validate refused:\n{xml}\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// Defines a domain in a real libvirt daemon (started here if none runs, and stopped
    /// again), checks `virsh dominfo`, undefines it. Run as root with `VMBUILD_TEST_LIBVIRT=1`.
    #[cfg(feature = "libvirt")]
    #[test]
    fn defines_a_domain_in_a_real_daemon() {
        if std::env::var_os("VMBUILD_TEST_LIBVIRT").is_none() {
            eprintln!("note: set VMBUILD_TEST_LIBVIRT=1 (as root) to define a domain in libvirtd");
            return;
        }
        let uri = "qemu:///system";
        let daemons = Daemons::ensure();
        let dir = tempfile::tempdir().unwrap();
        let qcow2 = dir.path().join("tiny.qcow2");
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow2)
            .arg("64M")
            .status()
            .unwrap();
        assert!(status.success());
        let name = format!("vmbuild-test-{}", std::process::id());
        let mut spec = spec(&name);
        spec.memory_mib = 256;
        spec.cpus = 1;
        let xml = libvirt_domain_xml(&spec, &qcow2, DomainType::Qemu);
        let defined = define_libvirt_domain(uri, &xml).unwrap();
        assert_eq!(defined, name);
        let virsh = |args: &[&str]| {
            std::process::Command::new("virsh")
                .args(["-c", uri])
                .args(args)
                .output()
                .unwrap()
        };
        let info = virsh(&["dominfo", &name]);
        let undefine = virsh(&["undefine", &name]);
        // A broken definition is reported with libvirt's reason.
        let broken = define_libvirt_domain(uri, "<domain type='qemu'><name>x</name></domain>");
        drop(daemons);
        let info_text = String::from_utf8_lossy(&info.stdout);
        eprintln!("virsh dominfo {name}:\n{info_text}");
        assert!(
            info.status.success(),
            "{}",
            String::from_utf8_lossy(&info.stderr)
        );
        assert!(info_text.contains(&name));
        assert!(info_text.contains("shut off"));
        assert!(undefine.status.success());
        let err = broken.unwrap_err();
        assert!(matches!(err, ImageError::Libvirt { .. }), "{err}");
        eprintln!("expected failure: {err}");
    }

    /// libvirtd and virtlogd started by a test, stopped (by pid) when dropped.
    #[cfg(feature = "libvirt")]
    struct Daemons {
        started: Vec<u32>,
    }

    #[cfg(feature = "libvirt")]
    impl Daemons {
        fn ensure() -> Daemons {
            let mut started = vec![];
            for (daemon, pidfile) in [
                ("virtlogd", "/run/virtlogd.pid"),
                ("libvirtd", "/run/libvirtd.pid"),
            ] {
                if read_live_pid(pidfile).is_some() {
                    continue;
                }
                let status = std::process::Command::new(daemon)
                    .arg("-d")
                    .status()
                    .unwrap();
                assert!(status.success(), "{daemon} -d failed");
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                let pid = loop {
                    if let Some(pid) = read_live_pid(pidfile) {
                        break pid;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{daemon} did not start"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(100));
                };
                started.push(pid);
            }
            // The socket appears a little after the pid file.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !Path::new("/run/libvirt/libvirt-sock").exists() {
                assert!(std::time::Instant::now() < deadline, "no libvirt socket");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Daemons { started }
        }
    }

    #[cfg(feature = "libvirt")]
    fn read_live_pid(pidfile: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    #[cfg(feature = "libvirt")]
    impl Drop for Daemons {
        fn drop(&mut self) {
            for &pid in self.started.iter().rev() {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                for _ in 0..100 {
                    if nix::sys::signal::kill(pid, None).is_err() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
}
