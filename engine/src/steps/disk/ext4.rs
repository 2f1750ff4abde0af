//! The root filesystem: `mkfs.ext4 -d` writes the tree straight into the partition of the
//! image file (`-E offset=`), so nothing is mounted and nothing is copied twice; free space
//! stays a hole of the fresh sparse file. The feature set comes from a private mke2fs.conf,
//! not from the build host's, so the result does not depend on the host's e2fsprogs defaults
//! and stays readable by the guest's GRUB 2.06 and e2fsck.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::tool::{DiskTool, MKFS_EXT4};
use super::DiskError;

/// Block size of the filesystem; partition sizes are multiples of it.
pub const BLOCK: u64 = 4096;

/// Debian bookworm's ext4 defaults, pinned (no `orphan_file`, `metadata_csum_seed` or
/// `large_dir`, which bookworm's GRUB or e2fsck may not know).
const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// What mkfs.ext4 is asked to make.
pub struct Mkfs<'a> {
    pub root: &'a Path,
    pub image: &'a Path,
    pub offset: u64,
    pub size: u64,
    pub uuid: &'a str,
    pub hash_seed: &'a str,
    pub label: &'a str,
    /// Seconds since the epoch for the superblock and root directory times; `None`: now.
    pub timestamp: Option<u64>,
}

impl Mkfs<'_> {
    /// Runs mkfs.ext4; `scratch` receives the private mke2fs.conf.
    pub fn run(&self, scratch: &Path) -> Result<(), DiskError> {
        let conf = scratch.join("mke2fs.conf");
        std::fs::write(&conf, MKE2FS_CONF).map_err(|source| DiskError::Io {
            action: "write",
            path: conf.clone(),
            source,
        })?;
        let extended = format!(
            "offset={},root_owner=0:0,hash_seed={},discard,lazy_itable_init=0,lazy_journal_init=0",
            self.offset, self.hash_seed
        );
        // discard: on a file, mke2fs punches the partition's range, learns that it reads back
        // as zeros and skips writing zeros itself (a 20 GiB image allocates 0.68 GB instead of
        // 1 GB). lazy_*_init=0: inode tables are marked zeroed, so the guest kernel never runs
        // ext4lazyinit and never grows a thin image on first boot.
        let blocks = (self.size / BLOCK).to_string();
        let args: [&OsStr; 15] = [
            "-q".as_ref(),
            "-F".as_ref(),
            "-b".as_ref(),
            "4096".as_ref(),
            "-U".as_ref(),
            self.uuid.as_ref(),
            "-L".as_ref(),
            self.label.as_ref(),
            "-E".as_ref(),
            extended.as_ref(),
            "-d".as_ref(),
            self.root.as_os_str(),
            "--".as_ref(),
            self.image.as_os_str(),
            blocks.as_ref(),
        ];
        let fake_time = self.timestamp.map(|t| t.to_string());
        let mut envs: Vec<(&str, &OsStr)> = vec![("MKE2FS_CONFIG", conf.as_os_str())];
        if let Some(t) = &fake_time {
            envs.push(("E2FSPROGS_FAKE_TIME", t.as_ref()));
        }
        MKFS_EXT4.run(args, &envs)?;
        Ok(())
    }
}

/// Reads the ext4 superblock of the filesystem at `offset` in `image` and returns its size
/// in bytes (block count × block size), checking the magic number on the way.
pub fn filesystem_size(image: &Path, offset: u64) -> Result<u64, DiskError> {
    let io = |source| DiskError::Io {
        action: "read the superblock of",
        path: image.to_path_buf(),
        source,
    };
    let mut sb = [0u8; 1024];
    let mut file = File::open(image).map_err(io)?;
    file.seek(SeekFrom::Start(offset + 1024)).map_err(io)?;
    file.read_exact(&mut sb).map_err(io)?;
    let u32_at = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"));
    if sb[0x38..0x3a] != [0x53, 0xEF] {
        return Err(DiskError::NoFilesystem {
            image: image.to_path_buf(),
            offset,
        });
    }
    let incompat_64bit = u32_at(0x60) & 0x80 != 0;
    let blocks_hi = if incompat_64bit { u32_at(0x150) } else { 0 };
    let blocks = (u64::from(blocks_hi) << 32) | u64::from(u32_at(0x04));
    let block_size = 1024u64 << u32_at(0x18);
    Ok(blocks * block_size)
}
