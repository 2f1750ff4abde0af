//! The typed recipe model: one struct per block kind. Each struct, with
//! `#[serde(deny_unknown_fields)]`, *is* the schema of its block: the decoder turns a block body
//! into JSON and deserializes it here, so an unknown attribute, a missing one or a wrong type is
//! reported against the recipe text.
//!
//! Field names are the attribute names users write. Nested blocks appear as fields too: a block
//! without labels is an object (`debootstrap { ... }`), a labelled one is a list of objects whose
//! label is under `$label` (`provision "shell" { ... }`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::value::{Secret, Text};

/// `step "NAME" { ... }`: a command the user writes; its output folder is `$VMBUILD_OUT`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepBlock {
    /// The program and its arguments. No shell is involved unless you call one.
    pub command: Vec<Text>,
    /// Steps whose outputs this one reads (`"step.NAME"`); each is `$VMBUILD_IN_<NAME>`.
    #[serde(default)]
    pub after: Vec<String>,
    /// Globs of local files (relative to the recipe) whose contents enter the key.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Extra environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, Text>,
    /// What the step is for, shown by `vmbuild show`.
    #[serde(default, skip_serializing)]
    pub description: Option<String>,
    /// Put the step's output into the VM at this path: the step is a layer.
    #[serde(default)]
    pub into: Option<String>,
    /// Layers whose files this one may overwrite (`step.NAME`).
    #[serde(default)]
    pub replaces: Vec<String>,
}

/// `variable "NAME" { ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableBlock {
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub description: Option<String>,
    /// A sensitive variable's value is a secret: never printed, and keyed by name only.
    #[serde(default)]
    pub sensitive: bool,
    #[serde(default, rename = "type")]
    pub type_name: Option<VariableType>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VariableType {
    String,
    Number,
    Bool,
    List,
    Map,
}

/// `data "http" "NAME" { ... }`: a JSON document read with a GET at plan time; recipes use its
/// parsed answer as `data.http.NAME.body` (and `.status`, `.text`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataHttpBlock {
    /// The `http://` or `https://` URL. It may be sensitive (a token in it, from `env()`).
    pub url: Text,
    /// Request headers; values may be sensitive (`Authorization = "Bearer ${env("TOKEN")}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, Text>,
    /// How long the whole exchange may take, redirects and body included (default `30s`).
    #[serde(default)]
    pub timeout: Option<DurationText>,
    /// The largest answer accepted (default `10M`).
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

/// `template "NAME" { ... }`: the OS root tree the VM starts from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TemplateBlock {
    #[serde(default)]
    pub debootstrap: Option<Debootstrap>,
    /// Import an existing qcow2 or raw disk image instead of bootstrapping.
    #[serde(default)]
    pub image: Option<ImageImport>,
    #[serde(default)]
    pub provision: Vec<Provision>,
    #[serde(default)]
    pub disk_size: Option<ByteSize>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Apply the distribution's updates while building.
    #[serde(default)]
    pub updates: bool,
    #[serde(default)]
    pub user: Option<UserBlock>,
    /// `"dhcp"` (the default) configures the first network interface by DHCP.
    #[serde(default)]
    pub network: Option<String>,
    /// The kernel package (default `linux-image-amd64`).
    #[serde(default)]
    pub kernel: Option<String>,
    /// `bios` (the default: MBR) or `bios+uefi` (GPT with an EFI system partition).
    #[serde(default)]
    pub firmware: Option<Firmware>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum Firmware {
    #[serde(rename = "bios")]
    Bios,
    #[serde(rename = "bios+uefi")]
    BiosAndUefi,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Debootstrap {
    pub suite: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub components: Vec<String>,
    /// Defaults to the mirror in the host's apt sources.
    #[serde(default)]
    pub mirror: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageImport {
    pub path: String,
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserBlock {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

/// `provision "shell" { ... }` or `provision "puppet" { ... }` inside a template.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "$label", rename_all = "lowercase")]
pub enum Provision {
    Shell(ShellProvision),
    Puppet(PuppetProvision),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShellProvision {
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub inline: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, Text>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PuppetProvision {
    pub manifest: String,
    #[serde(default)]
    pub module_path: Vec<String>,
}

/// `database "NAME" { ... }`: a database cloned from production, or created empty.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseBlock {
    pub engine: DatabaseEngine,
    /// Connection URL of the production source. Always a secret.
    #[serde(default)]
    pub source: Option<Secret>,
    #[serde(default)]
    pub schemas: Option<Schemas>,
    #[serde(default)]
    pub exclude_schemas: Vec<String>,
    #[serde(default)]
    pub exclude_table_data: Vec<String>,
    #[serde(default)]
    pub lock: Option<LockBlock>,
    /// A query whose result identifies the source's content (a release row, say).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Oracle only: also export the allowlist with Data Pump into this directory object of the
    /// source (`DATA_PUMP_DIR`), copied into the step's output as `datapump/NAME.dmp`.
    #[serde(default)]
    pub datapump_directory: Option<String>,
    /// Schema installation scripts for an empty database (instead of `source`).
    #[serde(default)]
    pub init: Vec<String>,
    /// The database name inside the VM.
    pub into: String,
    /// The application role that owns the clone.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseEngine {
    Postgres,
    Oracle,
}

/// The schema allowlist: a list, or `databaseinfo("core.databaseinfo")`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum Schemas {
    List(Vec<String>),
    Registry { registry: String, column: String },
}

impl<'de> Deserialize<'de> for Schemas {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Registry {
                registry: String,
                #[serde(default = "default_column")]
                column: String,
            },
        }
        fn default_column() -> String {
            "name".into()
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "expected a list of schema names or databaseinfo(\"schema.table\")",
            )
        })? {
            Raw::List(l) => Ok(Schemas::List(l)),
            Raw::Registry { registry, column } => Ok(Schemas::Registry { registry, column }),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LockBlock {
    pub name: String,
    #[serde(default)]
    pub wait: Option<DurationText>,
}

/// `source "NAME" { ... }`: a git repository at a revision, built into a layer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceBlock {
    /// A URL, or a folder relative to the recipe. It may be sensitive (a token from `env()`).
    pub git: Text,
    #[serde(rename = "ref")]
    pub git_ref: String,
    #[serde(default)]
    pub submodules: bool,
    #[serde(default)]
    pub build: Vec<Text>,
    /// Where the output goes in the VM: the checkout (required without `build`), or the
    /// install root of the build (default `/`).
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, Text>,
}

/// `files "NAME" { ... }`: a local file tree copied into the VM.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilesBlock {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// `config "NAME" { ... }`: a file rendered from a template with recipe values.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigBlock {
    /// The template file, relative to the recipe: text with `{{ NAME }}` placeholders.
    pub template: String,
    /// Where the rendered file goes in the VM (an absolute path).
    pub to: String,
    /// Values the template names by key (`{{ site }}`).
    #[serde(default)]
    pub values: BTreeMap<String, Text>,
    /// Octal file mode, `"0640"`; default 0644, or 0640 when the file holds a password.
    #[serde(default)]
    pub mode: Option<String>,
    /// `user` or `user:group` of the VM (names from its `/etc/passwd`), or numeric ids.
    #[serde(default)]
    pub owner: Option<String>,
    /// Layers whose file at `to` this one may overwrite (`source.NAME`, `files.NAME`).
    #[serde(default)]
    pub replaces: Vec<String>,
}

/// `sanitize { ... }`: what is scrubbed from the image, and what must appear nowhere.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SanitizeBlock {
    #[serde(default)]
    pub operations: Vec<SanitizeOperation>,
    /// Strings that must appear nowhere in the image; always treated as secrets.
    #[serde(default)]
    pub forbid: Vec<Text>,
    /// Files holding more forbidden strings, one per line.
    #[serde(default)]
    pub forbid_files: Vec<String>,
}

/// `forbid_software { ... }`: software whose license forbids redistribution (signalp, tmhmm,
/// Oracle's JDK, WU-BLAST), which must not be in the VM. Checked by the disk step against the
/// final tree, after sanitizing; a match fails the build.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForbidSoftwareBlock {
    /// Globs over the names of the Debian packages installed in the VM (`"signalp*"`).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Globs over the paths of the VM's tree, from its root (`"**/wublast/**"`, `"/opt/tmhmm*"`):
    /// `*` stays within a folder, `**` crosses folders.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// Why a `forbid_software` pattern is refused: a summary and a label for its span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern {
    pub summary: String,
    pub label: String,
}

impl ForbidSoftwareBlock {
    /// A `packages` pattern as a glob over package names. Debian's names are lower-case
    /// letters, digits, `+`, `-` and `.` (Debian Policy 5.6.1): a pattern with a `/`, a space
    /// or a capital letter could match none, and is refused.
    pub fn package_glob(pattern: &str) -> Result<globset::Glob, BadPattern> {
        if pattern.is_empty()
            || pattern
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_ascii_uppercase())
        {
            return Err(BadPattern {
                summary: format!("`{pattern}` matches no Debian package name"),
                label: "package names are lower-case letters, digits, `+`, `-` and `.`".into(),
            });
        }
        Self::glob(pattern, pattern)
    }

    /// A `paths` pattern as a glob over the VM's paths relative to its root (a leading `/` is
    /// the root, and so is no slash: `/opt/x` and `opt/x` are the same; a trailing `/` is
    /// dropped). `*` stays within one folder, `**` crosses folders.
    pub fn path_glob(pattern: &str) -> Result<globset::Glob, BadPattern> {
        let relative = pattern.trim_start_matches('/').trim_end_matches('/');
        if relative.is_empty() {
            return Err(BadPattern {
                summary: format!("`{pattern}` names the whole tree"),
                label: "name paths below the VM's root, such as \"/opt/wublast/**\"".into(),
            });
        }
        if relative.split('/').any(|part| part == "." || part == "..") {
            return Err(BadPattern {
                summary: format!("`{pattern}` has a `.` or `..` in it"),
                label: "paths start at the VM's root, without `.` or `..`".into(),
            });
        }
        Self::glob(relative, pattern)
    }

    /// `text` compiled; `pattern` is how the recipe wrote it, for the message.
    fn glob(text: &str, pattern: &str) -> Result<globset::Glob, BadPattern> {
        globset::GlobBuilder::new(text)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| BadPattern {
                summary: format!("`{pattern}` is not a valid glob"),
                label: e.kind().to_string(),
            })
    }
}

/// What a `sanitize` block scrubs from the VM's tree (see the book's sanitize page). The order
/// here is the order they run in.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum SanitizeOperation {
    ShellHistory,
    SshHostKeys,
    Logs,
    MachineId,
    AptCache,
    ProvisioningLeftovers,
    TmpFiles,
}

impl SanitizeOperation {
    /// The name recipes use (`shell-history`).
    pub fn name(self) -> &'static str {
        match self {
            SanitizeOperation::ShellHistory => "shell-history",
            SanitizeOperation::SshHostKeys => "ssh-host-keys",
            SanitizeOperation::Logs => "logs",
            SanitizeOperation::MachineId => "machine-id",
            SanitizeOperation::AptCache => "apt-cache",
            SanitizeOperation::ProvisioningLeftovers => "provisioning-leftovers",
            SanitizeOperation::TmpFiles => "tmp-files",
        }
    }
}

/// `output "FORMAT" { ... }`: a disk format to produce.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputBlock {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub compress: bool,
    /// For `vmdk`: `streamOptimized` (default) or `monolithicSparse`.
    #[serde(default)]
    pub subformat: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// For `libvirt`: a daemon to define the domain in (`qemu:///system`).
    #[serde(default)]
    pub libvirt_uri: Option<String>,
    /// For `libvirt`: `kvm` (the default) or `qemu` where KVM does not work.
    #[serde(default)]
    pub domain_type: Option<String>,
}

/// The formats an `output` block may name.
pub const OUTPUT_FORMATS: &[&str] = &["qcow2", "vmdk", "vdi", "ova", "raw", "libvirt"];

/// `qa { ... }`: checks run against the booted VM.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QaBlock {
    #[serde(default)]
    pub timeout: Option<DurationText>,
    /// Which outputs to boot (default: every output).
    #[serde(default)]
    pub formats: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpCheck>,
    #[serde(default)]
    pub command: Vec<CommandCheck>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    #[serde(rename = "$label")]
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub expect_status: Option<u16>,
    #[serde(default)]
    pub expect_body: Option<String>,
    /// Text the body must not contain (an excluded schema's name, a private address).
    #[serde(default)]
    pub reject_body: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandCheck {
    #[serde(rename = "$label")]
    pub name: String,
    pub run: String,
    #[serde(default)]
    pub expect_exit: Option<i32>,
    #[serde(default)]
    pub expect_output: Option<String>,
}

/// A size such as `"8G"`, `"512M"` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct ByteSize(pub u64);

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

impl ByteSize {
    pub fn parse(text: &str) -> Option<ByteSize> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().ok()?;
        let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            _ => return None,
        };
        Some(ByteSize((number * multiplier as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let bad = || serde::de::Error::custom("expected a size such as \"8G\" or \"512M\"");
        match Raw::deserialize(deserializer).map_err(|_| bad())? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).ok_or_else(bad),
        }
    }
}

/// A duration such as `"10m"`, `"90s"` or `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct DurationText(pub u64);

impl From<DurationText> for u64 {
    fn from(d: DurationText) -> u64 {
        d.0
    }
}

impl DurationText {
    pub fn parse(text: &str) -> Option<DurationText> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().ok()?;
        let seconds = match unit.trim() {
            "" | "s" => number,
            "m" => number * 60,
            "h" => number * 3600,
            _ => return None,
        };
        Some(DurationText(seconds))
    }

    pub fn as_duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DurationText::parse(&text).ok_or_else(|| {
            serde::de::Error::custom("expected a duration such as \"10m\", \"90s\" or \"1h\"")
        })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(ByteSize::parse("8G"), Some(ByteSize(8 << 30)));
        assert_eq!(ByteSize::parse("512M"), Some(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("12"), Some(ByteSize(12)));
        assert_eq!(ByteSize::parse("8X"), None);
        assert_eq!(DurationText::parse("10m"), Some(DurationText(600)));
        assert_eq!(DurationText::parse("1h"), Some(DurationText(3600)));
        assert_eq!(DurationText::parse("soon"), None);
    }
}
