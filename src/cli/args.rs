//! Command-line arguments (clap), resolved into [`Settings`] before anything runs.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "vmbuild",
    version,
    about = "Build standalone virtual-machine appliances of data-backed websites from a recipe",
    long_about = None,
)]
pub struct Args {
    /// The store of step outputs [default: the user's cache folder]
    #[arg(long, global = true, env = "VMBUILD_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// The configuration file (its `[remote]` table) [default: ~/.config/vmbuild/config.toml]
    #[arg(long, global = true, env = "VMBUILD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Never upload to the remote store, only read from it (a plan of an untrusted change)
    #[arg(long, global = true, env = "VMBUILD_NO_PUSH")]
    pub no_push: bool,

    /// The key that signs what this builder uploads [default: the configuration's signing_key]
    #[arg(long, global = true, env = "VMBUILD_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,

    /// Trust remote records signed by this key, besides the configuration's trusted_keys
    /// (repeatable)
    #[arg(long = "trusted-key", global = true, value_name = "NAME:KEY")]
    pub trusted_keys: Vec<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args, Clone)]
pub struct RemoteArgs {
    /// A remote store shared with other builders, behind the local one
    /// [default: the configuration's remote.url]
    #[arg(
        long,
        env = "VMBUILD_REMOTE",
        value_name = "s3://BUCKET/PREFIX?endpoint=URL&region=R"
    )]
    pub remote: Option<String>,
}

#[derive(Debug, clap::Args, Clone)]
pub struct VarArgs {
    /// Set a recipe variable (repeatable); `VMBUILD_VAR_NAME=value` works too
    #[arg(long = "var", short = 'v', value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
}

fn parse_var(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(n, v)| (n.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a recipe: syntax, types, references; runs nothing
    Validate {
        recipe: PathBuf,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Rewrite a recipe's HCL files in canonical form
    Fmt {
        recipe: PathBuf,
        /// Change nothing; exit 1 and show the difference if a file is not formatted
        #[arg(long)]
        check: bool,
    },
    /// Show what apply would run, what is cached, and why; runs nothing
    Plan {
        recipe: PathBuf,
        #[command(flatten)]
        vars: VarArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Save the plan, for `vmbuild apply PLANFILE`
        #[arg(long, value_name = "PLANFILE")]
        out: Option<PathBuf>,
        /// Exit 2 when something would run, 0 when everything is cached
        #[arg(long)]
        detailed_exitcode: bool,
        /// Only this step and what it depends on (repeatable), such as `database.toxo.dump`
        #[arg(long = "target", value_name = "STEP")]
        targets: Vec<String>,
    },
    /// Run what is out of date
    Apply {
        /// A recipe, or a plan saved by `vmbuild plan --out`
        recipe: PathBuf,
        #[command(flatten)]
        vars: VarArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Only this step and what it depends on (repeatable), such as `database.toxo.dump`
        #[arg(long = "target", value_name = "STEP")]
        targets: Vec<String>,
        /// Steps to run at once [default: the number of cores]
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// After a failure, let the steps that do not depend on it finish
        #[arg(long)]
        keep_going: bool,
        /// Where to put the VM's disk images, SHA256SUMS and manifest.json
        /// [default: `output/` beside the recipe]
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Define `libvirt` outputs' domains in this libvirt daemon (`qemu:///system`)
        #[arg(long, value_name = "URI")]
        libvirt_uri: Option<String>,
    },
    /// Print the step graph
    Graph {
        recipe: PathBuf,
        #[command(flatten)]
        vars: VarArgs,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Explain one step: its key, what went into it, its last build
    Show {
        /// A step id, such as `step.build`
        step: String,
        /// The recipe the step belongs to
        #[arg(long, short = 'r', env = "VMBUILD_RECIPE", default_value = ".")]
        recipe: PathBuf,
        #[command(flatten)]
        vars: VarArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Print the log of a step's latest run
    Log {
        step: String,
        #[arg(long, short = 'r', env = "VMBUILD_RECIPE", default_value = ".")]
        recipe: PathBuf,
    },
    /// What changed between two builds: sources and their commits, databases, packages, files
    Diff {
        /// The earlier build: a manifest.json, or an output folder holding one
        /// [default with --recipe: the build before the latest]
        before: Option<PathBuf>,
        /// The later build [default with --recipe: the latest]
        after: Option<PathBuf>,
        /// Compare builds of this recipe that the store keeps
        #[arg(long, short = 'r')]
        recipe: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
        /// Do not read the commits between two revisions of a source (no git access)
        #[arg(long)]
        no_log: bool,
    },
    /// Make and show the keys that sign records for a remote store
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Inspect the store
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Remove what the given recipes' current plans do not reference
    Gc {
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        /// Also keep the N most recent builds of each step
        #[arg(long, default_value_t = 0, value_name = "N")]
        keep_last: usize,
        /// Collect the remote store's garbage instead (VMBUILD_REMOTE or the configuration's
        /// remote.url), with the same keep rules
        #[arg(long)]
        remote: bool,
        /// With --remote: never remove what is younger than this (builders uploading meanwhile
        /// write their objects before their records)
        #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
        grace: std::time::Duration,
        #[command(flatten)]
        vars: VarArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Rehash every object and check every record
    Verify {
        /// Remove what is corrupt, so later runs rebuild it
        #[arg(long)]
        repair: bool,
        /// Verify the remote store instead (VMBUILD_REMOTE or the configuration's remote.url):
        /// rehash every object against the signed record or the name that vouches for it
        #[arg(long)]
        remote: bool,
    },
    /// Print where the store is
    Path,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a signing key; prints its public half, for other builders' trusted_keys
    Generate {
        /// The key's name, shown with its signatures (such as `ci-1` or `alice-laptop`)
        name: String,
        /// Where to write the secret key (a new file, mode 0600)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public half of a signing key
    Public {
        /// The secret key file
        file: PathBuf,
    },
}

/// `30s`, `15m`, `1h`, `2d` or a number of seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|at| text.split_at(at))
        .unwrap_or((text, "s"));
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 15m, 1h or 2d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "`{text}` is not a duration such as 30s, 15m, 1h or 2d"
            ))
        }
    };
    Ok(std::time::Duration::from_secs(number * seconds))
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PlanFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DiffFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}
