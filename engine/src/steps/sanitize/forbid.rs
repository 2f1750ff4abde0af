//! The forbidden strings of a `sanitize` block: the `forbid` values and every line of the
//! `forbid_files`, each with the *rule* a finding names it by (`env("TOXO_PASSWORD")`,
//! `forbid[1]`, `forbid_files "emails.txt" line 3`). Every one is treated as a secret, plain
//! text included: its value is never shown, and it enters keys only as a keyed digest.
//!
//! Whatever the block says, the production secrets the recipe handles (database source URLs and
//! their passwords, git credentials) are forbidden too: see [`production_secrets`].
//!
//! Checked at plan time: a string shorter than [`MIN_LEN`] bytes would turn up by chance in any
//! disk image, and an unreadable forbid file is an error at its entry.

use std::fmt;
use std::path::Path;

use crate::diag::Diagnostic;
use crate::recipe::{Named, Recipe, SanitizeBlock, Text};
use crate::steps::database::tls;

/// The shortest string worth forbidding: anything shorter matches by chance.
pub const MIN_LEN: usize = 4;

/// A string that must appear nowhere in the VM. `Debug` shows the rule, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Forbidden {
    /// What findings name it by; safe to show.
    pub rule: String,
    value: Vec<u8>,
}

impl Forbidden {
    pub fn new(rule: impl Into<String>, value: impl Into<Vec<u8>>) -> Forbidden {
        Forbidden {
            rule: rule.into(),
            value: value.into(),
        }
    }

    /// The bytes searched for: only for the matcher and for redaction.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
}

impl fmt::Debug for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Forbidden({})", self.rule)
    }
}

/// The forbidden strings of `named` (forbid files read relative to `recipe_dir`), in recipe
/// order, without repeats (a value listed twice keeps its first rule), and the problems found.
pub fn collect(
    named: &Named<SanitizeBlock>,
    recipe_dir: &Path,
) -> (Vec<Forbidden>, Vec<Diagnostic>) {
    let mut found: Vec<Forbidden> = Vec::new();
    let mut problems = Vec::new();
    let too_short = |what: String| {
        Diagnostic::error(format!("{what} is too short to forbid"))
            .help(format!(
                "a string under {MIN_LEN} bytes turns up by chance in any disk image: forbid a longer one"
            ))
    };
    for (i, text) in named.block.forbid.iter().enumerate() {
        let span = named.spans.item("forbid", i).unwrap_or(named.header());
        let rule = match text {
            Text::Secret(secret) => secret.identity().to_string(),
            Text::Plain(_) => format!("forbid[{i}]"),
        };
        let value = text.reveal().as_bytes();
        if value.len() < MIN_LEN {
            problems.push(
                too_short(format!("`{rule}`")).at(&span, format!("shorter than {MIN_LEN} bytes")),
            );
            continue;
        }
        found.push(Forbidden::new(rule, value));
    }
    for (i, file) in named.block.forbid_files.iter().enumerate() {
        let span = named
            .spans
            .item("forbid_files", i)
            .unwrap_or(named.header());
        let bytes = match std::fs::read(recipe_dir.join(file)) {
            Ok(bytes) => bytes,
            Err(e) => {
                problems.push(
                    Diagnostic::error(format!("cannot read the forbid file `{file}`: {e}"))
                        .at(&span, "listed here")
                        .help("forbid files are relative to the recipe's folder, one forbidden string per line"),
                );
                continue;
            }
        };
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let rule = format!("forbid_files \"{file}\" line {}", n + 1);
            if line.len() < MIN_LEN {
                problems.push(too_short(format!("line {} of `{file}`", n + 1)).at(
                    &span,
                    format!("a line of this file is shorter than {MIN_LEN} bytes"),
                ));
                continue;
            }
            found.push(Forbidden::new(rule, line));
        }
    }
    let mut unique: Vec<Forbidden> = Vec::with_capacity(found.len());
    for forbidden in found {
        if !unique.iter().any(|u| u.value == forbidden.value) {
            unique.push(forbidden);
        }
    }
    (unique, problems)
}

/// The production secrets a recipe handles, forbidden in the VM whether or not the recipe lists
/// them: each database source's URL and the password in it, the credentials in a `source`'s
/// git URL, and the tokens a `data "http"` block sends (in its URL or headers). (The VM's own
/// database passwords are not among them: they belong in the VM.)
pub fn production_secrets(recipe: &Recipe) -> Vec<Forbidden> {
    let mut found = Vec::new();
    for database in &recipe.databases {
        let Some(source) = &database.block.source else {
            continue;
        };
        let url = source.reveal();
        let which = format!("database \"{}\"", database.name);
        found.push(Forbidden::new(
            format!("the source of {which} ({})", source.identity()),
            url,
        ));
        let mut passwords: Vec<String> = url_password(url).into_iter().collect();
        if let Ok(parsed) = tls::parse(url) {
            if let Some(password) = parsed.config.get_password() {
                passwords.push(String::from_utf8_lossy(password).into_owned());
            }
        }
        if let Some(raw) = passwords.first().cloned() {
            let decoded = percent_encoding::percent_decode_str(&raw)
                .decode_utf8_lossy()
                .into_owned();
            passwords.push(decoded);
        }
        for password in passwords {
            found.push(Forbidden::new(
                format!(
                    "the password in the source of {which} ({})",
                    source.identity()
                ),
                password,
            ));
        }
    }
    for source in &recipe.git_sources {
        for credential in crate::url::credentials(source.block.git.reveal()) {
            found.push(Forbidden::new(
                format!(
                    "the credentials in the git URL of source \"{}\"",
                    source.name
                ),
                credential,
            ));
        }
    }
    for data in &recipe.data {
        for secret in crate::recipe::data_secrets(&data.block) {
            found.push(Forbidden::new(
                format!("the credentials of data \"http\" \"{}\"", data.name),
                secret,
            ));
        }
    }
    found.retain(|f| f.value.len() >= MIN_LEN);
    found
}

/// The password of a `scheme://user:password@host/...` URL, as written.
fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// `more` added to `list`, but for values already there.
pub fn merge(list: &mut Vec<Forbidden>, more: Vec<Forbidden>) {
    for forbidden in more {
        if !list.iter().any(|f| f.value == forbidden.value) {
            list.push(forbidden);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{Secret, SpanIndex};

    fn block(forbid: Vec<Text>, files: Vec<&str>) -> Named<SanitizeBlock> {
        Named {
            name: String::new(),
            block: SanitizeBlock {
                operations: vec![],
                forbid,
                forbid_files: files.into_iter().map(String::from).collect(),
            },
            spans: SpanIndex::default(),
        }
    }

    #[test]
    fn passwords_of_urls() {
        assert_eq!(
            url_password("postgres://u:p%40ss@h:5432/db?sslmode=require").as_deref(),
            Some("p%40ss")
        );
        assert_eq!(url_password("oracle://u:pw@h/SVC").as_deref(), Some("pw"));
        assert_eq!(url_password("postgres://u@h/db"), None);
        assert_eq!(url_password("host=h password=x"), None);
    }

    #[test]
    fn rules_name_entries_and_lines_never_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("emails.txt"),
            "alice@example.org\n\n  bob@example.org \r\nalice@example.org\n",
        )
        .unwrap();
        let named = block(
            vec![
                Text::Secret(Secret::new("env(\"TOXO_PASSWORD\")", "hunter2-pw")),
                Text::Plain("db1.production.example.org".into()),
            ],
            vec!["emails.txt"],
        );
        let (found, problems) = collect(&named, dir.path());
        assert!(problems.is_empty());
        let rules: Vec<&str> = found.iter().map(|f| f.rule.as_str()).collect();
        assert_eq!(
            rules,
            [
                "env(\"TOXO_PASSWORD\")",
                "forbid[1]",
                "forbid_files \"emails.txt\" line 1",
                "forbid_files \"emails.txt\" line 3",
            ]
        );
        assert_eq!(found[3].value(), b"bob@example.org");
        let shown = format!("{found:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("alice"),
            "{shown}"
        );
    }

    #[test]
    fn short_strings_and_missing_files_are_diagnostics_without_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("short.txt"), "long-enough\nab\n").unwrap();
        let named = block(
            vec![Text::Secret(Secret::new("env(\"PIN\")", "123"))],
            vec!["short.txt", "missing.txt"],
        );
        let (found, problems) = collect(&named, dir.path());
        assert_eq!(found.len(), 1);
        let text: Vec<String> = problems.iter().map(|d| format!("{d:?}")).collect();
        assert_eq!(problems.len(), 3, "{text:?}");
        assert!(
            text[0].contains("`env(\\\"PIN\\\")` is too short"),
            "{text:?}"
        );
        assert!(text[1].contains("line 2 of `short.txt`"), "{text:?}");
        assert!(text[2].contains("cannot read the forbid file `missing.txt`"));
        assert!(text
            .iter()
            .all(|t| !t.contains("123") && !t.contains("\"ab\"")));
    }
}
