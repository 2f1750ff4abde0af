//! The book cannot drift from the code: every `hcl` recipe in it validates with the real binary,
//! and the recipe reference lists exactly the attributes each block's schema accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use engine::recipe::model::*;

use crate::support::Project;

fn book() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("book/src")
}

fn pages() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = walkdir::WalkDir::new(book())
        .into_iter()
        .flatten()
        .map(|e| e.into_path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    found.sort();
    found
}

/// The fenced code blocks of a page: (info string, text, line of the fence).
fn code_blocks(text: &str) -> Vec<(String, String, usize)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String, usize)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_string(), String::new(), n + 1)),
            (Some(_), Some(rest)) if rest.trim().is_empty() => blocks.push(open.take().unwrap()),
            (Some((_, body, _)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// Quoted strings of a recipe that look like relative paths of files (`"provision/site.sh"`).
fn relative_files(recipe: &str) -> Vec<String> {
    let mut files = Vec::new();
    for piece in recipe.split('"').skip(1).step_by(2) {
        let is_path = !piece.is_empty()
            && !piece.starts_with('/')
            && !piece.contains("://")
            && piece
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
            && [
                ".sh", ".sql", ".pp", ".tmpl", ".txt", ".xml", ".ini", ".conf",
            ]
            .iter()
            .any(|ext| piece.ends_with(ext));
        if is_path {
            files.push(piece.to_string());
        }
    }
    files
}

/// The names in `env("NAME")` calls.
fn env_names(recipe: &str) -> Vec<String> {
    recipe
        .split("env(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_recipe_in_the_book_validates() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for (info, recipe, line) in code_blocks(&text) {
            // `hcl` is a whole recipe; `hcl,fragment` is a piece of one, shown in context.
            if info != "hcl" {
                continue;
            }
            let project = Project::new();
            project.recipe(&recipe);
            for file in relative_files(&recipe) {
                project.file(&file, "");
            }
            let mut command = project.command(&["validate", "site.hcl"]);
            for name in env_names(&recipe) {
                command.env(
                    name,
                    "postgres://reader:secret-for-the-book@db.example.org/site",
                );
            }
            let output = command.output().unwrap();
            if !output.status.success() {
                failures.push(format!(
                    "{}:{line}: the recipe does not validate:\n{}",
                    page.display(),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 10, "only {checked} recipes found in the book");
}

/// The attributes a schema struct accepts, from serde's own list in its unknown-field error.
fn attributes<T: serde::de::DeserializeOwned>() -> BTreeSet<String> {
    let error = serde_json::from_value::<T>(serde_json::json!({ "\u{1}": 0 }))
        .err()
        .expect("an unknown attribute is refused")
        .to_string();
    let expected = error
        .split_once("expected")
        .map(|(_, list)| list)
        .unwrap_or_else(|| panic!("no list of attributes in: {error}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| !name.starts_with('$'))
        .map(str::to_string)
        .collect()
}

/// The attributes the reference lists in the section headed `heading`: the first column of its
/// tables.
fn documented(reference: &str, heading: &str) -> BTreeSet<String> {
    let start = reference
        .lines()
        .position(|l| l.trim_start_matches('#').trim() == heading)
        .unwrap_or_else(|| panic!("the reference has no section `{heading}`"));
    reference
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_reference_lists_every_attribute_of_every_block() {
    let reference = std::fs::read_to_string(book().join("reference.md")).unwrap();
    let sections: Vec<(&str, BTreeSet<String>)> = vec![
        ("`variable \"NAME\"`", attributes::<VariableBlock>()),
        ("`data \"http\" \"NAME\"`", attributes::<DataHttpBlock>()),
        ("`step \"NAME\"`", attributes::<StepBlock>()),
        ("`template \"NAME\"`", attributes::<TemplateBlock>()),
        ("`debootstrap { }`", attributes::<Debootstrap>()),
        ("`image { }`", attributes::<ImageImport>()),
        ("`user { }`", attributes::<UserBlock>()),
        ("`provision \"shell\" { }`", attributes::<ShellProvision>()),
        (
            "`provision \"puppet\" { }`",
            attributes::<PuppetProvision>(),
        ),
        ("`database \"NAME\"`", attributes::<DatabaseBlock>()),
        ("`lock { }`", attributes::<LockBlock>()),
        ("`source \"NAME\"`", attributes::<SourceBlock>()),
        ("`files \"NAME\"`", attributes::<FilesBlock>()),
        ("`config \"NAME\"`", attributes::<ConfigBlock>()),
        ("`sanitize`", attributes::<SanitizeBlock>()),
        ("`forbid_software`", attributes::<ForbidSoftwareBlock>()),
        ("`output \"FORMAT\"`", attributes::<OutputBlock>()),
        ("`qa`", attributes::<QaBlock>()),
        ("`http \"NAME\" { }`", attributes::<HttpCheck>()),
        ("`command \"NAME\" { }`", attributes::<CommandCheck>()),
    ];
    for (heading, known) in sections {
        assert!(!known.is_empty(), "{heading}: no attributes found");
        let listed = documented(&reference, heading);
        let missing: Vec<&String> = known.difference(&listed).collect();
        let unknown: Vec<&String> = listed.difference(&known).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "{heading}: the reference misses {missing:?} and lists unknown {unknown:?}"
        );
    }
}

#[test]
fn every_page_is_in_the_summary() {
    let summary = std::fs::read_to_string(book().join("SUMMARY.md")).unwrap();
    for page in pages() {
        let relative = page.strip_prefix(book()).unwrap().display().to_string();
        if relative == "SUMMARY.md" {
            continue;
        }
        assert!(
            summary.contains(&format!("]({relative})")),
            "`{relative}` is not in SUMMARY.md"
        );
    }
}
