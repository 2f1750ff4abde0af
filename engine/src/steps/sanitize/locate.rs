//! Where a byte of a raw disk image is, for people: the partition table, the boot area before
//! the first partition, a partition, and inside an ext4 file system the file that holds it,
//! the journal, metadata or free space (deleted data).
//!
//! The partition table is read with `sfdisk --json`; inside ext4, e2fsprogs' `debugfs` opens
//! the file system in place (`image?offset=N`, read-only, no loop device): `icheck` maps
//! blocks to inodes, `ncheck` inodes to paths, `testb` tells free blocks from metadata.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use crate::steps::tools::{DEBUGFS, SFDISK};
use crate::steps::StepError;

const SECTOR: u64 = 512;
/// The journal's inode; 7 is the resize inode, and numbers below 11 are reserved.
const JOURNAL_INODE: u64 = 8;
const RESIZE_INODE: u64 = 7;
const FIRST_INODE: u64 = 11;
const ROOT_INODE: u64 = 2;

const GPT_BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const GPT_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// The layout of a disk image.
#[derive(Debug, Clone)]
pub struct DiskMap {
    size: u64,
    label: Option<Label>,
    partitions: Vec<Partition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Mbr,
    Gpt,
}

#[derive(Debug, Clone)]
struct Partition {
    number: usize,
    start: u64,
    size: u64,
    kind: String,
    /// The block size of the ext4 file system it holds, if it holds one.
    ext4_block: Option<u64>,
}

#[derive(Deserialize)]
struct SfdiskTable {
    partitiontable: SfdiskInner,
}

#[derive(Deserialize)]
struct SfdiskInner {
    label: String,
    sectorsize: Option<u64>,
    #[serde(default)]
    partitions: Vec<SfdiskPartition>,
}

#[derive(Deserialize)]
struct SfdiskPartition {
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    kind: String,
}

/// The ext4 block size, if `offset` of `image` starts an ext4 file system.
fn ext4_block_size(image: &File, offset: u64) -> Option<u64> {
    let mut superblock = [0u8; 1024];
    image.read_exact_at(&mut superblock, offset + 1024).ok()?;
    if superblock[0x38..0x3a] != [0x53, 0xEF] {
        return None;
    }
    let log = u32::from_le_bytes(superblock[0x18..0x1c].try_into().expect("4 bytes"));
    (log < 16).then(|| 1024u64 << log)
}

impl DiskMap {
    /// Read the partition table of `image`; an image without one (or that sfdisk cannot
    /// read) is a map with no partitions.
    pub fn read(image: &Path) -> Result<DiskMap, StepError> {
        let file = File::open(image).map_err(crate::steps::io_error("read", image))?;
        let size = file
            .metadata()
            .map_err(crate::steps::io_error("read", image))?
            .len();
        let program = SFDISK.find().ok_or_else(|| {
            StepError::Unmet(format!(
                "`sfdisk` is not installed: install the Debian package `{}`",
                SFDISK.package
            ))
        })?;
        let output = Command::new(program)
            .arg("--json")
            .arg(image)
            .env("LC_ALL", "C")
            .output()
            .map_err(|source| StepError::Spawn {
                program: "sfdisk".into(),
                source,
            })?;
        let table: Option<SfdiskInner> = output
            .status
            .success()
            .then(|| serde_json::from_slice::<SfdiskTable>(&output.stdout).ok())
            .flatten()
            .map(|t| t.partitiontable);
        let Some(table) = table else {
            return Ok(DiskMap {
                size,
                label: None,
                partitions: Vec::new(),
            });
        };
        let sector = table.sectorsize.unwrap_or(SECTOR);
        let partitions = table
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| Partition {
                number: i + 1,
                start: p.start * sector,
                size: p.size * sector,
                kind: p.kind.to_ascii_uppercase(),
                ext4_block: ext4_block_size(&file, p.start * sector),
            })
            .collect();
        Ok(DiskMap {
            size,
            label: match table.label.as_str() {
                "gpt" => Some(Label::Gpt),
                "dos" => Some(Label::Mbr),
                _ => None,
            },
            partitions,
        })
    }

    /// (offset, size) in bytes of each partition that holds an ext4 file system.
    pub fn ext4_partitions(&self) -> Vec<(u64, u64)> {
        self.partitions
            .iter()
            .filter(|p| p.ext4_block.is_some())
            .map(|p| (p.start, p.size))
            .collect()
    }

    /// What each of `offsets` is (same order). `image` is the file this map was read from.
    pub fn describe(&self, image: &Path, offsets: &[u64]) -> Result<Vec<String>, StepError> {
        let mut places: Vec<Option<String>> = vec![None; offsets.len()];
        // Offsets inside ext4 file systems, per partition: (index in `offsets`, block).
        let mut in_fs: BTreeMap<usize, Vec<(usize, u64)>> = BTreeMap::new();
        for (i, &offset) in offsets.iter().enumerate() {
            match self
                .partitions
                .iter()
                .position(|p| offset >= p.start && offset < p.start + p.size)
            {
                Some(index) => {
                    let part = &self.partitions[index];
                    let within = offset - part.start;
                    match part.ext4_block {
                        Some(block) => in_fs.entry(index).or_default().push((i, within / block)),
                        None => places[i] = Some(self.partition_place(part, within)),
                    }
                }
                None => places[i] = Some(self.outside_place(offset)),
            }
        }
        for (index, wanted) in in_fs {
            let part = &self.partitions[index];
            let blocks: Vec<u64> = wanted.iter().map(|(_, b)| *b).collect();
            let found = ext4_places(image, part.start, &blocks)?;
            for ((i, block), place) in wanted.iter().zip(found) {
                places[*i] = Some(format!(
                    "{place}, block {block} of partition {}",
                    part.number
                ));
            }
        }
        Ok(places.into_iter().map(|p| p.unwrap_or_default()).collect())
    }

    fn partition_place(&self, part: &Partition, within: u64) -> String {
        let what = match (self.label, part.kind.as_str()) {
            (Some(Label::Gpt), GPT_BIOS_BOOT) => {
                return "boot area: the BIOS boot partition (GRUB's core image)".into()
            }
            (Some(Label::Gpt), GPT_ESP) | (Some(Label::Mbr), "EF") => "the EFI system partition",
            _ => "a partition without an ext4 file system",
        };
        format!("{what} (partition {}), byte {within} of it", part.number)
    }

    fn outside_place(&self, offset: u64) -> String {
        let first = self.partitions.iter().map(|p| p.start).min();
        let last_end = self.partitions.iter().map(|p| p.start + p.size).max();
        match self.label {
            Some(Label::Mbr) if (446..512).contains(&offset) => "partition table (MBR)".into(),
            Some(Label::Gpt) if (446..512).contains(&offset) => {
                "partition table (protective MBR)".into()
            }
            Some(Label::Gpt) if (SECTOR..34 * SECTOR).contains(&offset) => {
                "partition table (GPT)".into()
            }
            Some(Label::Gpt) if offset >= self.size.saturating_sub(33 * SECTOR) => {
                "partition table (backup GPT)".into()
            }
            Some(_) if offset < 446 => "boot area, before the partition (MBR boot code)".into(),
            Some(_) if first.is_none_or(|f| offset < f) => "boot area, before the partition".into(),
            Some(_) if last_end.is_some_and(|e| offset >= e) => "after the last partition".into(),
            Some(_) => "between partitions".into(),
            None => String::new(),
        }
    }
}

/// Run debugfs on the file system at `offset` of `image` with `commands` (one per line);
/// returns its standard output.
fn debugfs(image: &Path, offset: u64, commands: &str) -> Result<String, StepError> {
    let program = DEBUGFS.find().ok_or_else(|| {
        StepError::Unmet(format!(
            "`debugfs` is not installed: install the Debian package `{}`",
            DEBUGFS.package
        ))
    })?;
    let mut device = image.as_os_str().to_os_string();
    device.push(format!("?offset={offset}"));
    let mut child = Command::new(program)
        .args(["-f", "-"])
        .arg(&device)
        .env("LC_ALL", "C")
        .env("DEBUGFS_PAGER", "__none__")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| StepError::Spawn {
            program: "debugfs".into(),
            source,
        })?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(commands.as_bytes())
            .map_err(|source| StepError::Spawn {
                program: "debugfs".into(),
                source,
            })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| StepError::Spawn {
            program: "debugfs".into(),
            source,
        })?;
    if !output.status.success() {
        return Err(StepError::Failed {
            program: "debugfs".into(),
            status: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What each ext4 block of `blocks` (file system at `offset` of `image`) belongs to.
fn ext4_places(image: &Path, offset: u64, blocks: &[u64]) -> Result<Vec<String>, StepError> {
    let mut unique: Vec<u64> = blocks.to_vec();
    unique.sort_unstable();
    unique.dedup();
    // Block → inode, or None where no inode owns it.
    let mut owner: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let list: Vec<String> = unique.iter().map(u64::to_string).collect();
    let answer = debugfs(image, offset, &format!("icheck {}\n", list.join(" ")))?;
    for line in answer.lines() {
        let mut fields = line.split('\t');
        let (Some(block), Some(inode)) = (fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(block) = block.trim().parse::<u64>() {
            owner.insert(block, inode.trim().parse::<u64>().ok());
        }
    }
    let inodes: Vec<u64> = {
        let mut v: Vec<u64> = owner
            .values()
            .flatten()
            .copied()
            .filter(|i| *i >= FIRST_INODE || *i == ROOT_INODE)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let unowned: Vec<u64> = unique
        .iter()
        .copied()
        .filter(|b| owner.get(b).copied().flatten().is_none())
        .collect();
    let mut commands = String::new();
    if !inodes.is_empty() {
        let list: Vec<String> = inodes.iter().map(u64::to_string).collect();
        commands.push_str(&format!("ncheck {}\n", list.join(" ")));
        for inode in &inodes {
            commands.push_str(&format!("stat <{inode}>\n"));
        }
    }
    for block in &unowned {
        commands.push_str(&format!("testb {block}\n"));
    }
    let mut paths: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut kinds: BTreeMap<u64, String> = BTreeMap::new();
    let mut free: BTreeMap<u64, bool> = BTreeMap::new();
    if !commands.is_empty() {
        let answer = debugfs(image, offset, &commands)?;
        // debugfs echoes each command as `debugfs: ...`, and ends some answers without a
        // newline, so an echo may follow an answer on the same line.
        let mut section = String::new();
        let mut pieces: Vec<(String, String)> = Vec::new();
        for line in answer.lines() {
            let (answer_part, echo) = match line.find("debugfs: ") {
                Some(at) => (&line[..at], Some(&line[at + "debugfs: ".len()..])),
                None => (line, None),
            };
            if !answer_part.is_empty() {
                pieces.push((section.clone(), answer_part.to_string()));
            }
            if let Some(command) = echo {
                section = command.split_whitespace().next().unwrap_or("").to_string();
            }
        }
        for (command, line) in pieces {
            match command.as_str() {
                "testb" => {
                    if let Some(rest) = line.strip_prefix("Block ") {
                        if let Some(Ok(block)) = rest.split_whitespace().next().map(str::parse) {
                            free.insert(block, rest.contains("not in use"));
                        }
                    }
                }
                "ncheck" => {
                    if let Some((inode, path)) = line.split_once('\t') {
                        if let Ok(inode) = inode.trim().parse::<u64>() {
                            // ncheck writes entries of the root folder as `//name`.
                            let path = match path.strip_prefix("//") {
                                Some(rest) => format!("/{rest}"),
                                None => path.to_string(),
                            };
                            paths.entry(inode).or_default().push(path);
                        }
                    }
                }
                "stat" => {
                    // `Inode: 13   Type: regular    Mode:  0644 ...`
                    if let Some(rest) = line.strip_prefix("Inode: ") {
                        let mut words = rest.split_whitespace();
                        let inode = words.next().and_then(|w| w.parse::<u64>().ok());
                        let kind = words.skip_while(|w| *w != "Type:").nth(1);
                        if let (Some(inode), Some(kind)) = (inode, kind) {
                            kinds.insert(inode, kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let noun = |inode: u64| match kinds.get(&inode).map(String::as_str) {
        Some("directory") => ("folder", " (the names of its entries)"),
        Some("symlink") => ("symbolic link", ""),
        _ => ("file", ""),
    };
    Ok(blocks
        .iter()
        .map(|block| match owner.get(block).copied().flatten() {
            Some(JOURNAL_INODE) => "the file system's journal".to_string(),
            Some(RESIZE_INODE) => "file system metadata (blocks reserved for growing)".into(),
            Some(inode) if inode < FIRST_INODE && inode != ROOT_INODE => {
                format!("file system metadata (reserved inode {inode})")
            }
            Some(inode) => match paths.get(&inode).map(Vec::as_slice) {
                Some([one]) => {
                    let (what, which) = noun(inode);
                    format!("{what} `{one}`{which}")
                }
                Some([first, rest @ ..]) => {
                    let (what, which) = noun(inode);
                    format!("{what} `{first}`{which} (and {} other names)", rest.len())
                }
                _ => format!("inode {inode}, in no folder"),
            },
            None => match free.get(block) {
                Some(true) => "free space (deleted data)".into(),
                _ => {
                    "file system metadata (superblock, descriptors, bitmaps or inode table)".into()
                }
            },
        })
        .collect())
}
