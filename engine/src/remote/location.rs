//! Where the remote store is (`s3://BUCKET/PREFIX?endpoint=URL&region=R`) and the credentials
//! to reach it, from the usual AWS environment variables or a profile of the shared
//! credentials file. The location holds no secret and is safe to show; the credentials are
//! never shown, logged or written anywhere.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The parameters a remote URL may carry.
const PARAMETERS: [&str; 3] = ["endpoint", "region", "virtual_hosted"];

/// A remote store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// An S3-compatible server's URL (`http://127.0.0.1:3900`); AWS itself when absent.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Address the bucket as `BUCKET.endpoint` instead of `endpoint/BUCKET` (path style, the
    /// default, which self-hosted servers expect).
    pub virtual_hosted: bool,
}

/// What is wrong with a remote URL or its credentials.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("the remote `{shown}` is not s3://BUCKET/PREFIX?endpoint=URL&region=REGION: {why}")]
    Malformed { shown: String, why: String },
    #[error("the remote URL must not hold credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")]
    CredentialsInUrl,
    #[error("no credentials for the remote store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in {file} (AWS_PROFILE, `default` otherwise)")]
    NoCredentials { file: String },
}

impl Location {
    /// Parse a remote URL.
    pub fn parse(text: &str) -> Result<Location, LocationError> {
        let malformed = |why: &str| LocationError::Malformed {
            shown: text.split('?').next().unwrap_or("").to_string(),
            why: why.to_string(),
        };
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| malformed("it must start with s3://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.contains('@') {
            return Err(LocationError::CredentialsInUrl);
        }
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'));
        if !valid_bucket {
            return Err(malformed(
                "a bucket name is 3 to 63 lowercase letters, digits, `.` and `-`",
            ));
        }
        let mut params = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !PARAMETERS.contains(&name) {
                return Err(malformed(&format!(
                    "unknown parameter `{name}` (known: {})",
                    PARAMETERS.join(", ")
                )));
            }
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| malformed("a parameter is not UTF-8"))?
                .to_string();
            params.insert(name, value);
        }
        if let Some(endpoint) = params.get("endpoint") {
            let Some((_, host)) = endpoint.split_once("://") else {
                return Err(malformed(
                    "the endpoint is a URL, such as http://127.0.0.1:3900",
                ));
            };
            if host.split('/').next().unwrap_or("").contains('@') {
                return Err(LocationError::CredentialsInUrl);
            }
        }
        let virtual_hosted = match params.get("virtual_hosted").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(malformed("virtual_hosted is true or false")),
        };
        Ok(Location {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: params.get("endpoint").cloned(),
            region: params.get("region").cloned(),
            virtual_hosted,
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)?;
        if let Some(endpoint) = &self.endpoint {
            write!(f, " at {endpoint}")?;
        }
        Ok(())
    }
}

/// Credentials for the S3 API. Debug shows the access key id only.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// The region of the profile's configuration, if it names one.
    pub region: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, secret not shown)", self.access_key_id)
    }
}

impl Credentials {
    /// From `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), else
    /// from the profile `AWS_PROFILE` (or `default`) of `AWS_SHARED_CREDENTIALS_FILE` (or
    /// `~/.aws/credentials`).
    pub fn from_environment() -> Result<Credentials, LocationError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let region = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION"));
        if let (Some(access_key_id), Some(secret_access_key)) =
            (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        {
            return Ok(Credentials {
                access_key_id,
                secret_access_key,
                session_token: var("AWS_SESSION_TOKEN"),
                region,
            });
        }
        let home = dirs::home_dir().unwrap_or_default();
        let file = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws").join("credentials"));
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let no_credentials = || LocationError::NoCredentials {
            file: file.display().to_string(),
        };
        let text = std::fs::read_to_string(&file).map_err(|_| no_credentials())?;
        let section = ini_section(&text, &profile);
        let (Some(access_key_id), Some(secret_access_key)) = (
            section.get("aws_access_key_id"),
            section.get("aws_secret_access_key"),
        ) else {
            return Err(no_credentials());
        };
        let config = var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws").join("config"));
        let config_region = std::fs::read_to_string(config).ok().and_then(|text| {
            let name = if profile == "default" {
                "default".to_string()
            } else {
                format!("profile {profile}")
            };
            ini_section(&text, &name).get("region").cloned()
        });
        Ok(Credentials {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.clone(),
            session_token: section.get("aws_session_token").cloned(),
            region: region.or(config_region),
        })
    }
}

/// The `key = value` lines of section `[name]` of an INI file such as `~/.aws/credentials`.
fn ini_section(text: &str, name: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == name;
        } else if inside {
            if let Some((key, value)) = line.split_once('=') {
                values.insert(key.trim().to_string(), value.trim().to_string());
            }
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_hosted_remote_parses() {
        let location = Location::parse(
            "s3://vm-cache/team/sites?endpoint=http://127.0.0.1:3900&region=garage",
        )
        .unwrap();
        assert_eq!(location.bucket, "vm-cache");
        assert_eq!(location.prefix, "team/sites");
        assert_eq!(location.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(location.region.as_deref(), Some("garage"));
        assert!(!location.virtual_hosted);
        assert_eq!(
            location.to_string(),
            "s3://vm-cache/team/sites at http://127.0.0.1:3900"
        );
    }

    #[test]
    fn credentials_in_a_remote_url_are_refused_without_being_repeated() {
        for url in [
            "s3://KEY:hunter2@bucket/x",
            "s3://bucket/x?endpoint=http://KEY:hunter2@host:3900",
        ] {
            let error = Location::parse(url).unwrap_err();
            assert!(matches!(error, LocationError::CredentialsInUrl), "{url}");
            assert!(!error.to_string().contains("hunter2"));
        }
        let error = Location::parse("s3://bucket/x?secret=hunter2").unwrap_err();
        assert!(
            error.to_string().contains("unknown parameter `secret`"),
            "{error}"
        );
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn a_profile_section_is_read() {
        let text = "[default]\naws_access_key_id = A\n\n[ci]\naws_access_key_id=B\naws_secret_access_key = S\n";
        let section = ini_section(text, "ci");
        assert_eq!(section.get("aws_access_key_id").unwrap(), "B");
        assert_eq!(section.get("aws_secret_access_key").unwrap(), "S");
    }
}
