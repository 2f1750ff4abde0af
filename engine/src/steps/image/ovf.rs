//! The OVF 1.0 descriptor of an OVA: one virtual system with CPUs, memory, an LSI Logic SCSI
//! controller holding one streamOptimized VMDK, and an E1000 network adapter on a network named
//! `NAT`, in the shape VMware (vmx-10 hardware) and VirtualBox both import. Elements of the
//! `rasd:` and `vssd:` schemas are written in their schemas' (alphabetical) sequence order,
//! which strict validators such as ovftool check.

use std::fmt::Write;

use super::{xml_escape, VmSpec};

/// The OVF `ovf:format` of a streamOptimized VMDK.
pub const VMDK_STREAM_OPTIMIZED: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// VMware's virtual hardware version: vmx-10 runs on ESXi 5.5+, Workstation 10+ and Fusion 6+;
/// VirtualBox accepts any `vmx-NN`.
pub const VIRTUAL_SYSTEM_TYPE: &str = "vmx-10";

/// The name of the logical network the adapter connects to.
pub const NETWORK: &str = "NAT";

/// The OVF descriptor for `spec` with one disk file `disk_file` of `file_size` bytes and a
/// virtual size of `capacity` bytes.
pub fn ovf_descriptor(spec: &VmSpec, disk_file: &str, file_size: u64, capacity: u64) -> String {
    let name = xml_escape(&spec.name);
    let disk_file = xml_escape(disk_file);
    let os = spec.os;
    let mut x = String::with_capacity(6000);
    // `write!` into a String cannot fail.
    let _ = write!(
        x,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{disk_file}" ovf:id="file1" ovf:size="{file_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{VMDK_STREAM_OPTIMIZED}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="{NETWORK}">
      <Description>The {NETWORK} network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
"#
    );
    if let Some(description) = &spec.description {
        let _ = write!(
            x,
            r#"    <AnnotationSection>
      <Info>A human-readable annotation</Info>
      <Annotation>{}</Annotation>
    </AnnotationSection>
"#,
            xml_escape(description)
        );
    }
    let _ = write!(
        x,
        r#"    <OperatingSystemSection ovf:id="{os_id}" vmw:osType="{vmw_os}">
      <Info>The kind of installed guest operating system</Info>
      <Description>{os_description}</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>{VIRTUAL_SYSTEM_TYPE}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{memory}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>{NETWORK}</rasd:Connection>
        <rasd:Description>E1000 ethernet adapter on "{NETWORK}"</rasd:Description>
        <rasd:ElementName>Ethernet 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        os_id = os.ovf_id(),
        vmw_os = os.vmware_os_type(),
        os_description = os.description(),
        cpus = spec.cpus,
        memory = spec.memory_mib,
    );
    x
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testutil::spec;
    use super::*;

    const OVF: &str = "http://schemas.dmtf.org/ovf/envelope/1";
    const RASD: &str =
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
    const VSSD: &str =
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";
    const VMW: &str = "http://www.vmware.com/schema/ovf";

    fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> roxmltree::Node<'a, 'i> {
        node.children()
            .find(|n| n.is_element() && n.tag_name().name() == name)
            .unwrap_or_else(|| panic!("no <{name}> in <{}>", node.tag_name().name()))
    }

    fn text<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> &'a str {
        child(node, name).text().unwrap_or("")
    }

    /// Check everything importers look at in a descriptor; returns the file size and capacity
    /// it declares for `disk_file`.
    pub(crate) fn check_descriptor(xml: &str, spec: &VmSpec, disk_file: &str) -> (u64, u64) {
        let doc = roxmltree::Document::parse(xml).expect("well-formed XML");
        let envelope = doc.root_element();
        assert_eq!(envelope.tag_name().name(), "Envelope");
        assert_eq!(envelope.tag_name().namespace(), Some(OVF));
        let sections: Vec<&str> = envelope
            .children()
            .filter(|n| n.is_element())
            .map(|n| n.tag_name().name())
            .collect();
        assert_eq!(
            sections,
            [
                "References",
                "DiskSection",
                "NetworkSection",
                "VirtualSystem"
            ]
        );

        let file = child(child(envelope, "References"), "File");
        assert_eq!(file.attribute((OVF, "href")), Some(disk_file));
        let size: u64 = file.attribute((OVF, "size")).unwrap().parse().unwrap();

        let disk = child(child(envelope, "DiskSection"), "Disk");
        assert_eq!(
            disk.attribute((OVF, "capacityAllocationUnits")),
            Some("byte")
        );
        assert_eq!(disk.attribute((OVF, "diskId")), Some("vmdisk1"));
        assert_eq!(
            disk.attribute((OVF, "fileRef")),
            file.attribute((OVF, "id"))
        );
        assert_eq!(disk.attribute((OVF, "format")), Some(VMDK_STREAM_OPTIMIZED));
        let capacity: u64 = disk.attribute((OVF, "capacity")).unwrap().parse().unwrap();

        let network = child(child(envelope, "NetworkSection"), "Network");
        assert_eq!(network.attribute((OVF, "name")), Some("NAT"));

        let system = child(envelope, "VirtualSystem");
        assert_eq!(system.attribute((OVF, "id")), Some(spec.name.as_str()));
        assert_eq!(text(system, "Name"), spec.name);
        // Every section has its Info first.
        for section in system
            .children()
            .filter(|n| n.is_element() && n.tag_name().name().ends_with("Section"))
        {
            let first = section.children().find(|n| n.is_element()).unwrap();
            assert_eq!(first.tag_name().name(), "Info");
        }
        if let Some(description) = &spec.description {
            assert_eq!(
                text(child(system, "AnnotationSection"), "Annotation"),
                description
            );
        }
        let os = child(system, "OperatingSystemSection");
        assert_eq!(os.attribute((OVF, "id")), Some("96"));
        assert_eq!(os.attribute((VMW, "osType")), Some("debian11_64Guest"));

        let hardware = child(system, "VirtualHardwareSection");
        let sys = child(hardware, "System");
        let vssd: Vec<&str> = sys
            .children()
            .filter(|n| n.is_element())
            .inspect(|n| assert_eq!(n.tag_name().namespace(), Some(VSSD)))
            .map(|n| n.tag_name().name())
            .collect();
        assert!(vssd.is_sorted(), "vssd elements out of order: {vssd:?}");
        assert_eq!(text(sys, "VirtualSystemType"), "vmx-10");

        let items: Vec<_> = hardware
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "Item")
            .collect();
        let mut ids = std::collections::HashSet::new();
        for item in &items {
            let names: Vec<&str> = item
                .children()
                .filter(|n| n.is_element())
                .inspect(|n| assert_eq!(n.tag_name().namespace(), Some(RASD)))
                .map(|n| n.tag_name().name())
                .collect();
            assert!(names.is_sorted(), "rasd elements out of order: {names:?}");
            assert!(
                ids.insert(text(*item, "InstanceID")),
                "duplicate InstanceID"
            );
            assert!(!text(*item, "ElementName").is_empty());
        }
        let of_type = |t: &str| {
            let found: Vec<_> = items
                .iter()
                .filter(|i| text(**i, "ResourceType") == t)
                .collect();
            assert_eq!(found.len(), 1, "items of ResourceType {t}");
            *found[0]
        };
        let cpu = of_type("3");
        assert_eq!(text(cpu, "VirtualQuantity"), spec.cpus.to_string());
        let memory = of_type("4");
        assert_eq!(text(memory, "AllocationUnits"), "byte * 2^20");
        assert_eq!(text(memory, "VirtualQuantity"), spec.memory_mib.to_string());
        let controller = of_type("6");
        assert_eq!(text(controller, "ResourceSubType"), "lsilogic");
        let disk_item = of_type("17");
        assert_eq!(text(disk_item, "HostResource"), "ovf:/disk/vmdisk1");
        assert_eq!(text(disk_item, "Parent"), text(controller, "InstanceID"));
        let nic = of_type("10");
        assert_eq!(text(nic, "Connection"), "NAT");
        assert_eq!(text(nic, "ResourceSubType"), "E1000");
        (size, capacity)
    }

    #[test]
    fn descriptor_has_what_importers_check() {
        let spec = spec("ToxoDB-68");
        let xml = ovf_descriptor(&spec, "ToxoDB-68-disk1.vmdk", 123_456, 8 << 30);
        let (size, capacity) = check_descriptor(&xml, &spec, "ToxoDB-68-disk1.vmdk");
        assert_eq!(size, 123_456);
        assert_eq!(capacity, 8 << 30);
    }

    #[test]
    fn descriptor_without_description_has_no_annotation() {
        let mut spec = spec("plain");
        spec.description = None;
        let xml = ovf_descriptor(&spec, "plain-disk1.vmdk", 1, 2);
        check_descriptor(&xml, &spec, "plain-disk1.vmdk");
        assert!(!xml.contains("AnnotationSection"));
    }
}
