//! Step keys and the explanation of a cache miss.
//!
//! A key is the blake3 of the canonical JSON of [`KeyInputs`]: the step's kind and
//! implementation version, its canonical parameters, the digests of its local inputs, the
//! *output digests* of its upstream steps (not their keys: a step that reruns and produces the
//! same bytes leaves its dependents' keys unchanged), and the tools it runs. The same structure
//! is stored in each action record, so a miss is explained by comparing two of them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::Digest;
use crate::steps::{Resolved, Step};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyInputs {
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, Digest>,
    pub upstream: BTreeMap<String, Digest>,
    pub tools: BTreeMap<String, String>,
    /// Set for a step that runs on every apply: unique to this vmbuild process, so its key is
    /// never found in the store, and left out of [`KeyInputs::own_digest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// A value unique to this process, the same for all its plans and applies.
fn process_nonce() -> String {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE
        .get_or_init(|| format!("{:032x}", rand::random::<u128>()))
        .clone()
}

impl KeyInputs {
    pub fn new(
        step: &dyn Step,
        resolved: &Resolved,
        upstream: BTreeMap<String, Digest>,
    ) -> KeyInputs {
        KeyInputs {
            kind: step.kind().to_string(),
            version: step.version(),
            params: step.params(),
            inputs: resolved.inputs.clone(),
            // Named as the step knows them: a module's steps have the same key in every
            // instance of the module, whatever its steps' ids in the recipe's graph.
            upstream: upstream
                .into_iter()
                .map(|(id, digest)| (step.upstream_name(&id).to_string(), digest))
                .collect(),
            tools: resolved.tools.clone(),
            nonce: step.always_runs().map(|_| process_nonce()),
        }
    }

    pub fn key(&self) -> Digest {
        Digest::of_canonical(self)
    }

    /// The digest of everything but the upstream outputs: what a saved plan pins for steps whose
    /// key is not known until their upstream has run.
    pub fn own_digest(&self) -> Digest {
        let mut own = self.clone();
        own.upstream.clear();
        own.nonce = None;
        own.key()
    }
}

/// One difference between the inputs of the last build of a step and now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "what", content = "name", rename_all = "snake_case")]
pub enum Change {
    Kind,
    Version,
    Parameter(String),
    InputAdded(String),
    InputRemoved(String),
    InputChanged(String),
    Upstream(String),
    Tool(String),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Kind => f.write_str("step kind changed"),
            Change::Version => f.write_str("implementation version changed"),
            Change::Parameter(p) => write!(f, "parameter `{p}` changed"),
            Change::InputAdded(p) => write!(f, "input `{p}` added"),
            Change::InputRemoved(p) => write!(f, "input `{p}` removed"),
            Change::InputChanged(p) => write!(f, "input `{p}` changed"),
            Change::Upstream(id) => write!(f, "output of `{id}` changed"),
            Change::Tool(t) => write!(f, "tool `{t}` changed"),
        }
    }
}

/// What differs between `before` and `now`. Upstream outputs are compared only when
/// `compare_upstream` (they are unknown while an upstream step is still to run).
pub fn changes(before: &KeyInputs, now: &KeyInputs, compare_upstream: bool) -> Vec<Change> {
    let mut out = Vec::new();
    if before.kind != now.kind {
        out.push(Change::Kind);
    }
    if before.version != now.version {
        out.push(Change::Version);
    }
    diff_params(&before.params, &now.params, "", 0, &mut out);
    for (path, digest) in &now.inputs {
        match before.inputs.get(path) {
            None => out.push(Change::InputAdded(path.clone())),
            Some(d) if d != digest => out.push(Change::InputChanged(path.clone())),
            _ => {}
        }
    }
    for path in before
        .inputs
        .keys()
        .filter(|p| !now.inputs.contains_key(*p))
    {
        out.push(Change::InputRemoved(path.clone()));
    }
    if compare_upstream {
        for (id, digest) in &now.upstream {
            if before.upstream.get(id) != Some(digest) {
                out.push(Change::Upstream(id.clone()));
            }
        }
    }
    for (tool, version) in &now.tools {
        if before.tools.get(tool) != Some(version) {
            out.push(Change::Tool(tool.clone()));
        }
    }
    out
}

fn diff_params(
    before: &serde_json::Value,
    now: &serde_json::Value,
    prefix: &str,
    depth: usize,
    out: &mut Vec<Change>,
) {
    use serde_json::Value;
    if before == now {
        return;
    }
    match (before, now) {
        (Value::Object(a), Value::Object(b)) if depth < 2 => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                diff_params(
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    &path,
                    depth + 1,
                    out,
                );
            }
        }
        _ => out.push(Change::Parameter(if prefix.is_empty() {
            "(all)".into()
        } else {
            prefix.to_string()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(params: serde_json::Value) -> KeyInputs {
        KeyInputs {
            kind: "command".into(),
            version: 1,
            params,
            inputs: BTreeMap::new(),
            upstream: BTreeMap::new(),
            tools: BTreeMap::new(),
            nonce: None,
        }
    }

    #[test]
    fn names_the_changed_parameter() {
        let a = inputs(json!({"command": ["sh"], "env": {"A": "1", "B": "2"}}));
        let b = inputs(json!({"command": ["sh"], "env": {"A": "1", "B": "3"}}));
        assert_eq!(
            changes(&a, &b, true),
            vec![Change::Parameter("env.B".into())]
        );
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn upstream_digests_enter_the_key_but_not_the_own_digest() {
        let a = inputs(json!({}));
        let mut b = a.clone();
        b.upstream.insert("step.x".into(), Digest::of_bytes(b"x"));
        assert_ne!(a.key(), b.key());
        assert_eq!(a.own_digest(), b.own_digest());
        assert_eq!(
            changes(&a, &b, true),
            vec![Change::Upstream("step.x".into())]
        );
        assert!(changes(&a, &b, false).is_empty());
    }
}
