//! The master boot record: a DOS partition table with one bootable Linux partition, built
//! in memory as the 512 bytes of sector 0 (the boot code area is left for [`super::grub`]).

/// Bytes per logical sector; the only size this step produces.
pub const SECTOR: u64 = 512;

/// Where the partition table starts in sector 0.
pub const TABLE_START: usize = 446;
/// Where the optional 32-bit disk signature lives (Windows NT "disk identifier").
pub const DISK_SIGNATURE: usize = 440;
/// The boot code area grub's boot.img may fill: everything before the disk signature.
pub const BOOT_CODE_END: usize = DISK_SIGNATURE;

/// Partition type byte for a Linux filesystem.
const TYPE_LINUX: u8 = 0x83;
/// Partition type byte of a GPT protective MBR.
const TYPE_GPT_PROTECTIVE: u8 = 0xEE;
/// Status byte of the active (bootable) partition.
const ACTIVE: u8 = 0x80;

/// What an MBR entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Linux filesystem (type 0x83).
    Linux,
    /// The whole disk, on a GPT disk (type 0xEE).
    GptProtective,
}

/// One primary partition, in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub first_lba: u32,
    pub sectors: u32,
    pub kind: Kind,
}

/// Sector 0 with `partition` as the first (active) entry, the disk signature and the
/// 0x55AA boot signature; the boot code area is zero.
pub fn sector0(partition: Partition, disk_signature: u32) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    mbr[DISK_SIGNATURE..DISK_SIGNATURE + 4].copy_from_slice(&disk_signature.to_le_bytes());
    let entry = &mut mbr[TABLE_START..TABLE_START + 16];
    let last_lba = u64::from(partition.first_lba) + u64::from(partition.sectors) - 1;
    let last_lba = u32::try_from(last_lba).unwrap_or(u32::MAX);
    entry[0] = ACTIVE;
    entry[1..4].copy_from_slice(&chs(partition.first_lba));
    entry[4] = match partition.kind {
        Kind::Linux => TYPE_LINUX,
        Kind::GptProtective => TYPE_GPT_PROTECTIVE,
    };
    entry[5..8].copy_from_slice(&chs(last_lba));
    entry[8..12].copy_from_slice(&partition.first_lba.to_le_bytes());
    entry[12..16].copy_from_slice(&partition.sectors.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

/// The legacy cylinder/head/sector address of `lba` in the 255-head, 63-sector geometry
/// every partitioning tool assumes, saturated at the largest address CHS can express.
fn chs(lba: u32) -> [u8; 3] {
    const HEADS: u32 = 255;
    const SECTORS: u32 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 8) as u8) << 6),
        cylinder as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_what_sfdisk_writes() {
        // sfdisk's entry for a partition from 2048 to the end of a 2 GiB disk
        assert_eq!(chs(2048), [0x20, 0x21, 0x00]);
        assert_eq!(chs(4_194_303), [0x15, 0x50, 0x05]);
        assert_eq!(chs(1024 * 255 * 63), [0xFE, 0xFF, 0xFF]);
        assert_eq!(chs(0), [0, 1, 0]);
    }

    #[test]
    fn one_active_linux_partition() {
        let mbr = sector0(
            Partition {
                first_lba: 2048,
                sectors: 4_192_256,
                kind: Kind::Linux,
            },
            0xDEAD_BEEF,
        );
        assert_eq!(&mbr[510..], &[0x55, 0xAA]);
        assert_eq!(mbr[446], 0x80);
        assert_eq!(mbr[450], 0x83);
        assert_eq!(&mbr[454..458], &2048u32.to_le_bytes());
        assert_eq!(&mbr[458..462], &4_192_256u32.to_le_bytes());
        assert_eq!(&mbr[440..444], &0xDEAD_BEEFu32.to_le_bytes());
        assert!(mbr[462..510].iter().all(|&b| b == 0));
    }
}
