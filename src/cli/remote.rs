//! The remote store's settings: the `[remote]` table of the configuration file, overridden by
//! flags and `VMBUILD_*` variables; opening the client; and the notes printed after it was used
//! (failures that did not stop the command, records ignored as untrusted).
//!
//! ```toml
//! [remote]
//! url = "s3://vm-cache/sites?endpoint=https://s3.example.org&region=garage"
//! signing_key = "/etc/vmbuild/ci-1.key"
//! trusted_keys = ["ci-1:BASE64...", "alice-laptop:BASE64..."]
//! push = true
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::remote::{Credentials, Location, Remote, RemoteOptions, SigningKey, TrustedKey};
use serde::Deserialize;

use super::args::Args;
use super::Failure;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    remote: RemoteConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteConfig {
    url: Option<String>,
    signing_key: Option<PathBuf>,
    #[serde(default)]
    trusted_keys: Vec<String>,
    push: Option<bool>,
}

/// `$XDG_CONFIG_HOME/vmbuild/config.toml` (`~/.config/vmbuild/config.toml`).
fn default_config() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("vmbuild").join("config.toml"))
}

fn read_config(args: &Args) -> Result<RemoteConfig, Failure> {
    let (path, required) = match &args.config {
        Some(path) => (path.clone(), true),
        None => match default_config() {
            Some(path) => (path, false),
            None => return Ok(RemoteConfig::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(RemoteConfig::default())
        }
        Err(e) => {
            return Err(Failure::Message(format!(
                "cannot read the configuration `{}`: {e}",
                path.display()
            )))
        }
    };
    let config: ConfigFile = toml::from_str(&text)
        .map_err(|e| Failure::Message(format!("the configuration `{}`: {e}", path.display())))?;
    Ok(config.remote)
}

/// The remote store to use, if one is set (`url`: the command's `--remote`, which clap also
/// takes from `VMBUILD_REMOTE`; otherwise the variable itself, then the configuration).
pub fn open(args: &Args, url: Option<&str>) -> Result<Option<Arc<Remote>>, Failure> {
    let config = read_config(args)?;
    let from_env = std::env::var("VMBUILD_REMOTE")
        .ok()
        .filter(|u| !u.is_empty());
    let Some(url) = url.map(str::to_string).or(from_env).or(config.url.clone()) else {
        return Ok(None);
    };
    let location = Location::parse(&url).map_err(Failure::from)?;
    let credentials = Credentials::from_environment().map_err(Failure::from)?;
    let signing_key = match args.signing_key.as_ref().or(config.signing_key.as_ref()) {
        Some(path) => Some(SigningKey::read(path).map_err(Failure::from)?),
        None => None,
    };
    let mut trusted_keys = Vec::new();
    for text in config.trusted_keys.iter().chain(&args.trusted_keys) {
        trusted_keys.push(TrustedKey::parse(text).map_err(Failure::from)?);
    }
    let push = !args.no_push && config.push.unwrap_or(true);
    let remote = Remote::open(RemoteOptions {
        location,
        credentials,
        signing_key,
        trusted_keys,
        push,
    })
    .map_err(Failure::from)?;
    Ok(Some(Arc::new(remote)))
}

/// The remote store for `gc --remote` and `store verify --remote`: it must be set.
pub fn required(args: &Args, command: &str) -> Result<Arc<Remote>, Failure> {
    open(args, None)?.ok_or_else(|| {
        Failure::Message(format!(
            "`{command} --remote` needs a remote store: set VMBUILD_REMOTE, or url in the [remote] table of {}",
            default_config()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the configuration".to_string())
        ))
    })
}

/// After a command used the remote store: what went wrong without stopping it, and the records
/// it ignored.
pub fn print_notes(remote: &Remote) {
    for failure in remote.failures() {
        eprintln!("warning: {failure}");
    }
    let ignored = remote.ignored();
    if let Some((key, why)) = ignored.iter().next() {
        let more = match ignored.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        eprintln!(
            "note: the remote store's record of {}{more} was ignored: {why}; such records count as misses",
            key.short()
        );
    }
}

/// `vmbuild key generate`: a new signing key in `out`, its public half on standard output.
pub fn generate_key(name: &str, out: &Path) -> Result<(), Failure> {
    let key = SigningKey::generate(name).map_err(Failure::from)?;
    key.write_new(out).map_err(Failure::from)?;
    println!("{}", key.public());
    eprintln!(
        "Wrote the signing key `{}` (keep it secret). Builders that should trust it list the line above in trusted_keys.",
        out.display()
    );
    Ok(())
}
