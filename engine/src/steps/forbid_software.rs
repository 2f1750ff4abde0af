//! The `forbid_software` guard: software whose license forbids redistribution (signalp, tmhmm,
//! Oracle's JDK, WU-BLAST) must not creep into an appliance. The disk step runs it on the VM's
//! final tree, after the layers are composed and the `sanitize` operations have run, before
//! the disk is made: a match fails the step, naming every package or path and the rule it
//! matched, and no disk is made.
//!
//! - `packages` globs are matched against the Debian packages of the VM's dpkg database, as
//!   `dpkg-query --admindir=<tree>/var/lib/dpkg` lists them. A package counts while its files
//!   are on disk: installed, or unpacked, half-configured, half-installed, awaiting triggers.
//!   A removed package whose configuration files remain (`rc`, `config-files`) is not a
//!   violation (its programs are gone; the log says it was seen), nor is one that dpkg only
//!   remembers (`not-installed`). Without a dpkg database the guard cannot tell, and fails.
//! - `paths` globs are matched against every entry of the tree, walked once, by its path from
//!   the VM's root. Symbolic links are matched by their own path and never followed, so
//!   nothing outside the tree is looked at (a link's target inside the tree is walked under its
//!   own path anyway). A folder that matches is one violation, which counts the entries inside
//!   it, rather than one per file.

use std::path::{Path, PathBuf};

use globset::{GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::recipe::{ForbidSoftwareBlock, Named};
use crate::steps::{io_error, StepError};

/// Bumped when what the guard counts as a violation changes (it is in the disk step's key).
pub const GUARD_VERSION: u32 = 1;

/// How many violations the step's error lists; the log lists up to [`MAX_LOGGED`].
pub const MAX_LISTED: usize = 20;
const MAX_LOGGED: usize = 1000;

/// The dpkg database of a tree, relative to its root.
pub const DPKG_ADMINDIR: &str = "var/lib/dpkg";

/// The rules of a `forbid_software` block, as written: they enter the disk step's key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SoftwareRules {
    pub version: u32,
    pub packages: Vec<String>,
    pub paths: Vec<String>,
}

impl SoftwareRules {
    pub fn new(named: &Named<ForbidSoftwareBlock>) -> SoftwareRules {
        SoftwareRules {
            version: GUARD_VERSION,
            packages: named.block.packages.clone(),
            paths: named.block.paths.clone(),
        }
    }

    /// `forbid_software.packages[0] "signalp*"`.
    fn rule(&self, list: &str, index: usize) -> String {
        let pattern = match list {
            "packages" => &self.packages[index],
            _ => &self.paths[index],
        };
        format!("forbid_software.{list}[{index}] {pattern:?}")
    }

    /// What plan shows under the disk step.
    pub fn details(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (list, patterns) in [("packages", &self.packages), ("paths", &self.paths)] {
            if !patterns.is_empty() {
                lines.push(format!("forbid_software {list}: {}", patterns.join(", ")));
            }
        }
        lines
    }
}

/// A package of the VM's dpkg database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// dpkg's state: `installed`, `config-files`, `unpacked`, `not-installed`, ...
    pub state: String,
}

impl Package {
    /// Whether the package's files are on disk (not merely its configuration files, or a
    /// memory of it).
    pub fn files_present(&self) -> bool {
        !matches!(self.state.as_str(), "config-files" | "not-installed")
    }
}

/// What `dpkg-query` says of a tree's dpkg database.
#[derive(Debug, Clone)]
pub struct PackageList {
    pub packages: Vec<Package>,
    /// Whether `/var/lib/dpkg/status` is a file of the tree (no symbolic link on the way).
    pub has_database: bool,
    /// dpkg-query's failure, if it failed.
    pub failure: Option<String>,
}

impl PackageList {
    /// `name\tversion` per line, as the disk step records them (`packages.txt`).
    pub fn as_text(&self) -> String {
        self.packages
            .iter()
            .map(|p| format!("{}\t{}\n", p.name, p.version))
            .collect()
    }
}

/// The packages of the dpkg database inside `root`, by `dpkg-query -W`.
pub fn installed_packages(root: &Path) -> Result<PackageList, StepError> {
    let admindir = root.join(DPKG_ADMINDIR);
    let output = std::process::Command::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args(["-W", "-f", "${Package}\t${Version}\t${Status}\n"])
        .output()
        .map_err(|source| StepError::Spawn {
            program: "dpkg-query".into(),
            source,
        })?;
    let packages = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let name = fields.next()?.to_string();
            let version = fields.next()?.to_string();
            let state = fields.next()?.split(' ').nth(2)?.to_string();
            Some(Package {
                name,
                version,
                state,
            })
        })
        .collect();
    let failure = (!output.status.success()).then(|| {
        format!(
            "`dpkg-query` exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
    });
    Ok(PackageList {
        packages,
        has_database: real_file(root, &format!("{DPKG_ADMINDIR}/status")),
        failure,
    })
}

/// Whether `relative` is a regular file of the tree at `root`, with no symbolic link on the
/// way that could lead out of it.
fn real_file(root: &Path, relative: &str) -> bool {
    let mut path = root.to_path_buf();
    let parts: Vec<&str> = relative.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let Ok(meta) = path.symlink_metadata() else {
            return false;
        };
        let last = i + 1 == parts.len();
        if (last && !meta.is_file()) || (!last && !meta.is_dir()) {
            return false;
        }
    }
    true
}

/// One match of a rule in the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    Package {
        name: String,
        version: String,
        state: String,
        rule: String,
    },
    Path {
        /// From the VM's root, with a leading `/`.
        path: String,
        kind: EntryKind,
        /// For a folder: how many entries are inside it (at any depth).
        inside: u64,
        rule: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Folder,
    Link,
    Other,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Package {
                name,
                version,
                state,
                rule,
            } => {
                write!(f, "package `{name}` {version}")?;
                if state != "installed" {
                    write!(f, " ({state})")?;
                }
                write!(f, " matches {rule}")
            }
            Violation::Path {
                path,
                kind,
                inside,
                rule,
            } => match kind {
                EntryKind::Folder => write!(
                    f,
                    "folder `{path}/` ({inside} entr{} inside) matches {rule}",
                    if *inside == 1 { "y" } else { "ies" }
                ),
                EntryKind::Link => write!(f, "link `{path}` matches {rule}"),
                EntryKind::File | EntryKind::Other => write!(f, "`{path}` matches {rule}"),
            },
        }
    }
}

/// What the guard found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Forbidden packages that are removed but whose configuration files remain, with the
    /// rule: not violations, but said in the log.
    pub removed: Vec<(Package, String)>,
    pub packages_checked: usize,
    pub paths_checked: u64,
}

impl Report {
    /// Lines for the step's log: every violation (up to a limit), and what was checked.
    pub fn log_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .removed
            .iter()
            .map(|(p, rule)| {
                format!(
                    "forbid_software: package `{}` {} matches {rule}, but is removed (only its configuration files remain, `rc`): not a violation",
                    p.name, p.version
                )
            })
            .collect();
        for v in self.violations.iter().take(MAX_LOGGED) {
            lines.push(format!("forbid_software: FORBIDDEN: {v}"));
        }
        if self.violations.len() > MAX_LOGGED {
            lines.push(format!(
                "forbid_software: ... and {} more",
                self.violations.len() - MAX_LOGGED
            ));
        }
        lines.push(format!(
            "forbid_software: {} package{} and {} path{} checked, {} forbidden",
            self.packages_checked,
            if self.packages_checked == 1 { "" } else { "s" },
            self.paths_checked,
            if self.paths_checked == 1 { "" } else { "s" },
            if self.violations.is_empty() {
                "none".to_string()
            } else {
                self.violations.len().to_string()
            }
        ));
        lines
    }

    /// The step's error when something is forbidden: up to [`MAX_LISTED`] violations, then a
    /// count of the rest.
    pub fn failure(&self, step: &str) -> Option<String> {
        if self.violations.is_empty() {
            return None;
        }
        let count = self.violations.len();
        let mut text = format!(
            "software that must not be redistributed is in the VM ({count} match{}); no disk is made:",
            if count == 1 { "" } else { "es" }
        );
        for v in self.violations.iter().take(MAX_LISTED) {
            text.push_str(&format!("\n  - {v}"));
        }
        if count > MAX_LISTED {
            text.push_str(&format!(
                "\n  - ... and {} more (`vmbuild log {step}` lists them)",
                count - MAX_LISTED
            ));
        }
        Some(text)
    }
}

/// The rules, compiled.
pub struct Guard {
    rules: SoftwareRules,
    packages: GlobSet,
    paths: GlobSet,
}

impl Guard {
    /// Compile the rules (the recipe's validation refused bad patterns already).
    pub fn new(rules: &SoftwareRules) -> Result<Guard, StepError> {
        let set = |patterns: &[String],
                   glob: fn(&str) -> Result<globset::Glob, crate::recipe::BadPattern>|
         -> Result<GlobSet, StepError> {
            let mut builder = GlobSetBuilder::new();
            for pattern in patterns {
                builder.add(glob(pattern).map_err(|bad| StepError::Unmet(bad.summary))?);
            }
            builder
                .build()
                .map_err(|e| StepError::Unmet(format!("forbid_software: {e}")))
        };
        Ok(Guard {
            packages: set(&rules.packages, ForbidSoftwareBlock::package_glob)?,
            paths: set(&rules.paths, ForbidSoftwareBlock::path_glob)?,
            rules: rules.clone(),
        })
    }

    /// Check the tree at `root`, whose packages are `list`.
    pub fn check(&self, root: &Path, list: &PackageList) -> Result<Report, StepError> {
        let mut report = Report::default();
        if !self.rules.packages.is_empty() {
            self.check_packages(list, &mut report)?;
        }
        if !self.rules.paths.is_empty() {
            self.check_paths(root, &mut report)?;
        }
        Ok(report)
    }

    fn check_packages(&self, list: &PackageList, report: &mut Report) -> Result<(), StepError> {
        if !list.has_database {
            return Err(StepError::Unmet(format!(
                "forbid_software lists packages, and the VM has no dpkg database (`/{DPKG_ADMINDIR}/status`, a file of its own): what is installed cannot be checked"
            )));
        }
        if let Some(failure) = &list.failure {
            return Err(StepError::Unmet(format!(
                "forbid_software cannot read the VM's packages: {failure}"
            )));
        }
        for package in &list.packages {
            report.packages_checked += 1;
            for index in self.packages.matches(&package.name) {
                let rule = self.rules.rule("packages", index);
                if package.files_present() {
                    report.violations.push(Violation::Package {
                        name: package.name.clone(),
                        version: package.version.clone(),
                        state: package.state.clone(),
                        rule,
                    });
                } else if package.state == "config-files" {
                    report.removed.push((package.clone(), rule));
                }
            }
        }
        Ok(())
    }

    fn check_paths(&self, root: &Path, report: &mut Report) -> Result<(), StepError> {
        // Per rule: the folder violation (its index in `report.violations`, its path) whose
        // entries are being walked; the walk is depth first, so one per rule is enough.
        let mut open: Vec<Option<(usize, PathBuf)>> = vec![None; self.rules.paths.len()];
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .min_depth(1)
            .sort_by_file_name();
        let mut matched = Vec::new();
        for entry in walk {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(root).to_path_buf();
                io_error("walk", &path)(std::io::Error::other(e))
            })?;
            report.paths_checked += 1;
            let relative = entry
                .path()
                .strip_prefix(root)
                .expect("the walk stays under its root")
                .to_path_buf();
            // Entries inside a folder that matched count towards it.
            let mut inside = vec![false; open.len()];
            for (rule, slot) in open.iter_mut().enumerate() {
                if let Some((at, folder)) = slot {
                    if relative.starts_with(&*folder) {
                        if let Violation::Path { inside: n, .. } = &mut report.violations[*at] {
                            *n += 1;
                        }
                        inside[rule] = true;
                    } else {
                        *slot = None;
                    }
                }
            }
            self.paths.matches_into(&relative, &mut matched);
            for &index in &matched {
                if inside[index] {
                    continue;
                }
                let file_type = entry.file_type();
                let kind = if file_type.is_symlink() {
                    EntryKind::Link
                } else if file_type.is_dir() {
                    EntryKind::Folder
                } else if file_type.is_file() {
                    EntryKind::File
                } else {
                    EntryKind::Other
                };
                if kind == EntryKind::Folder {
                    open[index] = Some((report.violations.len(), relative.clone()));
                }
                report.violations.push(Violation::Path {
                    path: format!("/{}", relative.to_string_lossy()),
                    kind,
                    inside: 0,
                    rule: self.rules.rule("paths", index),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::SpanIndex;
    use crate::steps::sanitize::testutil::write;

    fn rules(packages: &[&str], paths: &[&str]) -> SoftwareRules {
        SoftwareRules::new(&Named {
            name: String::new(),
            block: ForbidSoftwareBlock {
                packages: packages.iter().map(|s| s.to_string()).collect(),
                paths: paths.iter().map(|s| s.to_string()).collect(),
            },
            spans: SpanIndex::default(),
        })
    }

    /// A dpkg status file with these packages: (name, version, status).
    fn dpkg_status(root: &Path, packages: &[(&str, &str, &str)]) {
        let mut text = String::new();
        for (name, version, status) in packages {
            text.push_str(&format!(
                "Package: {name}\nStatus: {status}\nPriority: optional\nSection: science\nInstalled-Size: 100\nMaintainer: Nobody <nobody@example.org>\nArchitecture: amd64\nVersion: {version}\nDescription: {name} for tests\n\n"
            ));
        }
        write(root, "/var/lib/dpkg/status", text.as_bytes());
    }

    fn check(root: &Path, rules: &SoftwareRules) -> Report {
        let list = installed_packages(root).unwrap();
        Guard::new(rules).unwrap().check(root, &list).unwrap()
    }

    fn listed(report: &Report) -> Vec<String> {
        report.violations.iter().map(|v| v.to_string()).collect()
    }

    fn standard() -> SoftwareRules {
        rules(&["signalp*", "tmhmm*", "oracle-java*"], &["**/wublast/**"])
    }

    fn clean_tree(root: &Path) {
        dpkg_status(
            root,
            &[
                ("base-files", "12.4+deb12u5", "install ok installed"),
                ("ncbi-blast+", "2.12.0+ds-3+b1", "install ok installed"),
                ("openjdk-17-jre", "17.0.12+7-2", "install ok installed"),
            ],
        );
        write(
            root,
            "/usr/bin/blastn",
            b"\x7fELF public-domain NCBI BLAST\n",
        );
        write(root, "/etc/hostname", b"vm\n");
    }

    #[test]
    fn the_recorded_list_is_byte_for_byte_what_dpkg_query_printed_before() {
        // `packages.txt` keeps its bytes (and the disk its output digest): on this machine's
        // own database, against the query the disk step ran before the guard.
        let root = Path::new("/");
        if !root.join(DPKG_ADMINDIR).join("status").is_file() {
            eprintln!("skipped: this machine has no dpkg database");
            return;
        }
        let before = std::process::Command::new("dpkg-query")
            .arg("--admindir=/var/lib/dpkg")
            .args(["-W", "-f", "${Package}\t${Version}\n"])
            .output()
            .unwrap();
        let list = installed_packages(root).unwrap();
        assert!(list.has_database && list.failure.is_none());
        assert!(list.packages.len() > 50, "{}", list.packages.len());
        assert_eq!(list.as_text(), String::from_utf8(before.stdout).unwrap());
    }

    #[test]
    fn a_clean_tree_passes() {
        let dir = tempfile::tempdir().unwrap();
        clean_tree(dir.path());
        let report = check(dir.path(), &standard());
        assert!(report.violations.is_empty(), "{:?}", listed(&report));
        assert_eq!(report.packages_checked, 3);
        assert!(report.paths_checked >= 8, "{}", report.paths_checked);
        assert_eq!(report.failure("template.t.disk"), None);
        assert_eq!(
            report.log_lines().last().unwrap(),
            &format!(
                "forbid_software: 3 packages and {} paths checked, none forbidden",
                report.paths_checked
            )
        );
    }

    #[test]
    fn a_planted_package_and_path_fail_with_their_rules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        clean_tree(root);
        dpkg_status(
            root,
            &[
                ("base-files", "12.4+deb12u5", "install ok installed"),
                ("signalp", "6.0", "install ok installed"),
                ("tmhmm-data", "2.0c", "install ok unpacked"),
            ],
        );
        write(root, "/opt/wublast/blastall", b"\x7fELF WU-BLAST 2.0\n");
        let report = check(root, &standard());
        assert_eq!(
            listed(&report),
            [
                "package `signalp` 6.0 matches forbid_software.packages[0] \"signalp*\"",
                "package `tmhmm-data` 2.0c (unpacked) matches forbid_software.packages[1] \"tmhmm*\"",
                "`/opt/wublast/blastall` matches forbid_software.paths[0] \"**/wublast/**\"",
            ]
        );
        let failure = report.failure("template.t.disk").unwrap();
        assert!(
            failure.starts_with(
                "software that must not be redistributed is in the VM (3 matches); no disk is made:\n  - package `signalp` 6.0 matches"
            ),
            "{failure}"
        );
    }

    #[test]
    fn a_removed_package_with_its_configuration_left_is_no_violation() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        dpkg_status(
            root,
            &[
                ("signalp", "6.0", "deinstall ok config-files"),
                ("tmhmm", "2.0c", "purge ok not-installed"),
            ],
        );
        let report = check(root, &standard());
        assert!(report.violations.is_empty(), "{:?}", listed(&report));
        assert_eq!(report.removed.len(), 1);
        assert_eq!(report.removed[0].0.name, "signalp");
        let log = report.log_lines().join("\n");
        assert!(
            log.contains("package `signalp` 6.0 matches forbid_software.packages[0] \"signalp*\", but is removed"),
            "{log}"
        );
        // The same package installed again is one.
        dpkg_status(root, &[("signalp", "6.0", "install ok installed")]);
        assert_eq!(check(root, &standard()).violations.len(), 1);
    }

    #[test]
    fn without_a_dpkg_database_package_rules_fail_and_path_rules_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "/opt/wublast/blastall", b"WU-BLAST\n");
        let list = installed_packages(root).unwrap();
        assert!(!list.has_database);
        let error = Guard::new(&standard())
            .unwrap()
            .check(root, &list)
            .unwrap_err()
            .to_string();
        assert!(error.contains("the VM has no dpkg database"), "{error}");
        let paths_only = rules(&[], &["**/wublast/**"]);
        let report = check(root, &paths_only);
        assert_eq!(report.violations.len(), 1);
        // A status file reached through a link out of the tree is no database of the VM's.
        let elsewhere = tempfile::tempdir().unwrap();
        dpkg_status(
            elsewhere.path(),
            &[("signalp", "6.0", "install ok installed")],
        );
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("var/lib"), root.join("var/lib")).unwrap();
        assert!(!installed_packages(root).unwrap().has_database);
    }

    #[test]
    fn globs_cross_folders_only_with_two_stars() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "/opt/wublast/blastall", b"x");
        write(root, "/usr/local/share/wublast/matrix/BLOSUM62", b"x");
        write(root, "/opt/tmhmm-2.0c/bin/decodeanhmm", b"x");
        write(root, "/srv/site/lib/oracle-jdk.tar", b"x");
        let report = check(
            root,
            &rules(
                &[],
                &[
                    "/opt/tmhmm*",
                    "opt/*/bin/*",
                    "*.tar",
                    "**/*.tar",
                    "/usr/*/wublast/**",
                    "**/wublast/**",
                ],
            ),
        );
        assert_eq!(
            listed(&report),
            [
                "folder `/opt/tmhmm-2.0c/` (2 entries inside) matches forbid_software.paths[0] \"/opt/tmhmm*\"",
                "`/opt/tmhmm-2.0c/bin/decodeanhmm` matches forbid_software.paths[1] \"opt/*/bin/*\"",
                "`/opt/wublast/blastall` matches forbid_software.paths[5] \"**/wublast/**\"",
                "`/srv/site/lib/oracle-jdk.tar` matches forbid_software.paths[3] \"**/*.tar\"",
                "folder `/usr/local/share/wublast/matrix/` (1 entry inside) matches forbid_software.paths[5] \"**/wublast/**\"",
            ]
        );
    }

    #[test]
    fn links_are_matched_by_their_own_path_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        // Outside the tree: software the build machine has, which is not in the VM.
        let host = dir.path().join("host");
        write(&host, "/wublast/blastall", b"WU-BLAST\n");
        write(&root, "/etc/hostname", b"vm\n");
        std::fs::create_dir_all(root.join("usr/local")).unwrap();
        std::os::unix::fs::symlink(&host, root.join("usr/local/tools")).unwrap();
        std::os::unix::fs::symlink("/opt/wublast", root.join("usr/local/blast")).unwrap();
        let report = check(&root, &rules(&[], &["**/wublast/**", "**/blast"]));
        assert_eq!(
            listed(&report),
            ["link `/usr/local/blast` matches forbid_software.paths[1] \"**/blast\""]
        );
        // Every entry of the tree was looked at, and nothing behind the link to the host.
        assert_eq!(report.paths_checked, 6, "{report:?}");
    }

    #[test]
    fn the_error_lists_twenty_violations_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..25 {
            write(root, &format!("/opt/signalp/lib/part{i:02}.pm"), b"x");
        }
        let report = check(root, &rules(&[], &["**/*.pm"]));
        let failure = report.failure("template.t.disk").unwrap();
        assert!(failure.contains("(25 matches)"), "{failure}");
        assert_eq!(failure.matches("\n  - `/opt/signalp/lib/part").count(), 20);
        assert!(
            failure.ends_with("\n  - ... and 5 more (`vmbuild log template.t.disk` lists them)"),
            "{failure}"
        );
        let log = report.log_lines();
        assert_eq!(log.iter().filter(|l| l.contains("FORBIDDEN")).count(), 25);
    }

    #[test]
    fn patterns_that_can_match_nothing_are_refused() {
        assert!(ForbidSoftwareBlock::package_glob("signalp*").is_ok());
        assert!(ForbidSoftwareBlock::package_glob("libtmhmm[0-9]*").is_ok());
        for bad in ["Oracle-Java*", "opt/signalp", "signal p", ""] {
            let error = ForbidSoftwareBlock::package_glob(bad).unwrap_err();
            assert!(error.summary.contains("matches no Debian package"), "{bad}");
        }
        let error = ForbidSoftwareBlock::package_glob("signalp[").unwrap_err();
        assert_eq!(error.summary, "`signalp[` is not a valid glob");
        assert!(ForbidSoftwareBlock::path_glob("/opt/wublast/").is_ok());
        for bad in ["/", "", "/opt/../etc/*"] {
            assert!(ForbidSoftwareBlock::path_glob(bad).is_err(), "{bad}");
        }
        let error = ForbidSoftwareBlock::path_glob("/opt/{wublast").unwrap_err();
        assert_eq!(error.summary, "`/opt/{wublast` is not a valid glob");
    }
}
