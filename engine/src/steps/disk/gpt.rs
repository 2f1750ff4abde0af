//! The GUID partition table of a BIOS-and-UEFI disk: the protective MBR (whose boot code
//! area [`super::grub`] fills), the primary header and entries at LBA 1..34 and their
//! backup at the end of the disk, built in memory. GUIDs are given by the caller, so the
//! table is deterministic.

use super::mbr::{self, SECTOR};

/// Number of partition entries in the array, and the size of each: the usual 128 × 128 bytes,
/// 32 sectors.
const ENTRIES: usize = 128;
const ENTRY_SIZE: usize = 128;
const ENTRY_SECTORS: u64 = (ENTRIES * ENTRY_SIZE) as u64 / SECTOR;

/// GRUB's BIOS boot partition ("Hah!IdontNeedEFI").
pub const TYPE_BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
/// EFI system partition.
pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Root partition for x86-64 in the Discoverable Partitions Specification.
pub const TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

/// One partition, in sectors, with its GUIDs as hyphenated strings.
#[derive(Debug, Clone)]
pub struct Entry {
    pub type_guid: &'static str,
    pub guid: String,
    pub first_lba: u64,
    pub sectors: u64,
    pub name: &'static str,
}

/// The bytes to write, each at its offset.
pub struct Table {
    /// Sector 0: protective MBR, boot code area zero.
    pub sector0: [u8; 512],
    /// LBA 1 (header) and LBA 2..34 (entries).
    pub primary: Vec<u8>,
    /// The entries then the header, ending at the last sector of the disk.
    pub backup: Vec<u8>,
    /// Byte offset of `backup`.
    pub backup_offset: u64,
}

/// The first LBA a partition may use.
pub const FIRST_USABLE: u64 = 2 + ENTRY_SECTORS;

/// The highest last LBA a partition may use on a disk of `disk_sectors`.
pub fn last_usable(disk_sectors: u64) -> u64 {
    disk_sectors - 1 - ENTRY_SECTORS - 1
}

/// The table for a disk of `disk_sectors` with `entries` (which the caller has placed
/// between [`FIRST_USABLE`] and [`last_usable`]).
pub fn table(disk_sectors: u64, disk_guid: &str, entries: &[Entry]) -> Table {
    let last_lba = disk_sectors - 1;
    let mut array = vec![0u8; ENTRIES * ENTRY_SIZE];
    for (slot, entry) in array.chunks_mut(ENTRY_SIZE).zip(entries) {
        slot[0..16].copy_from_slice(&guid_bytes(entry.type_guid));
        slot[16..32].copy_from_slice(&guid_bytes(&entry.guid));
        slot[32..40].copy_from_slice(&entry.first_lba.to_le_bytes());
        slot[40..48].copy_from_slice(&(entry.first_lba + entry.sectors - 1).to_le_bytes());
        for (i, unit) in entry.name.encode_utf16().take(36).enumerate() {
            slot[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let array_crc = crc32(&array);
    let header = |my_lba: u64, alternate_lba: u64, entries_lba: u64| {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        h[40..48].copy_from_slice(&FIRST_USABLE.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable(disk_sectors).to_le_bytes());
        h[56..72].copy_from_slice(&guid_bytes(disk_guid));
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let mut primary = header(1, last_lba, 2);
    primary.extend_from_slice(&array);
    let backup_entries_lba = last_lba - ENTRY_SECTORS;
    let mut backup = array;
    backup.extend(header(last_lba, 1, backup_entries_lba));

    let mut sector0 = mbr::sector0(
        mbr::Partition {
            first_lba: 1,
            sectors: u32::try_from(last_lba).unwrap_or(u32::MAX),
            kind: mbr::Kind::GptProtective,
        },
        0,
    );
    // The protective entry must not be marked active (UEFI spec 5.2.3).
    sector0[mbr::TABLE_START] = 0;
    Table {
        sector0,
        primary,
        backup,
        backup_offset: backup_entries_lba * SECTOR,
    }
}

/// A GUID's on-disk bytes: the first three fields little-endian, the rest as written.
fn guid_bytes(guid: &str) -> [u8; 16] {
    let hex: String = guid.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    hex::decode_to_slice(&hex, &mut b).expect("a well-formed GUID");
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn guid_mixed_endian() {
        assert_eq!(
            guid_bytes(TYPE_ESP),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
    }

    #[test]
    fn primary_and_backup_point_at_each_other() {
        let sectors = 4 << 20; // 2 GiB
        let t = table(
            sectors,
            "01234567-89ab-4def-8123-456789abcdef",
            &[Entry {
                type_guid: TYPE_ROOT_X86_64,
                guid: "11111111-2222-4333-8444-555555555555".into(),
                first_lba: 2048,
                sectors: 1000,
                name: "root",
            }],
        );
        assert_eq!(&t.primary[..8], b"EFI PART");
        assert_eq!(t.primary.len(), 33 * 512);
        let backup_header = &t.backup[32 * 512..];
        assert_eq!(&backup_header[..8], b"EFI PART");
        assert_eq!(&backup_header[24..32], &(sectors - 1).to_le_bytes());
        assert_eq!(&backup_header[72..80], &(sectors - 33).to_le_bytes());
        assert_eq!(t.backup_offset + t.backup.len() as u64, sectors * 512);
        assert_eq!(t.sector0[450], 0xEE);
        assert_eq!(&t.sector0[510..], &[0x55, 0xAA]);
    }
}
