//! Evaluated values: what an expression becomes once variables, locals and functions are applied.
//!
//! A [`Secret`] is a string that must never be shown: it comes from `env()` (sensitive unless
//! wrapped in `nonsensitive()`), from a variable declared `sensitive = true`, from
//! `sensitive(...)`, or from interpolating any of those into a string. It carries an *identity*
//! (the expression that produced it, such as `env("TOXO_PASSWORD")`), which is what plans and
//! step keys use in its place.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::diag::Span;

/// The marker key under which a secret travels through serde (see [`Value::to_json`]).
pub const SECRET_MARKER: &str = "$vmbuild::secret";

/// What an unknown value decodes as (see [`Value::Unknown`]).
pub const UNKNOWN_PLACEHOLDER: &str = "(known at plan time)";

/// A sensitive string. Its `Debug`, `Display` and `Serialize` forms show only its identity.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    identity: String,
    value: String,
    /// The secret values it was made of (itself, or the secrets interpolated into it): what
    /// must be blanked out of logs, since a command may print them one by one.
    parts: Vec<String>,
}

impl Secret {
    pub fn new(identity: impl Into<String>, value: impl Into<String>) -> Secret {
        let value = value.into();
        Secret {
            identity: identity.into(),
            parts: vec![value.clone()],
            value,
        }
    }

    /// A secret composed of other values, of which `parts` are secret.
    pub fn composed(
        identity: impl Into<String>,
        value: impl Into<String>,
        parts: Vec<String>,
    ) -> Secret {
        Secret {
            identity: identity.into(),
            value: value.into(),
            parts,
        }
    }

    /// The secret values within, for redaction.
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// The expression it came from, safe to show.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The value itself: only for handing to a child process or a database connection.
    pub fn reveal(&self) -> &str {
        &self.value
    }

    /// This secret as a URL that may be shown: without its credentials, when what is left holds
    /// none of its secret parts; `None` when it does, and only its identity may be shown.
    pub fn shown_url(&self) -> Option<String> {
        let shown = crate::url::shown(&self.value);
        let leaks = self
            .parts
            .iter()
            .any(|p| !p.is_empty() && shown.contains(p.as_str()));
        (!leaks).then_some(shown)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.identity)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(sensitive: {})", self.identity)
    }
}

/// Serialized for keys and plans: `{"sensitive": "<identity>"}`, never the value.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("sensitive", &self.identity)?;
        map.end()
    }
}

/// Deserialized only from the transient form made by [`Value::to_json`].
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Inner {
            identity: String,
            value: String,
            parts: Vec<String>,
        }
        #[derive(Deserialize)]
        struct Outer {
            #[serde(rename = "$vmbuild::secret")]
            secret: Inner,
        }
        let outer = Outer::deserialize(deserializer)?;
        Ok(Secret::composed(
            outer.secret.identity,
            outer.secret.value,
            outer.secret.parts,
        ))
    }
}

/// A string that may be sensitive: plain text, or a [`Secret`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Plain(String),
    Secret(Secret),
}

impl Text {
    pub fn reveal(&self) -> &str {
        match self {
            Text::Plain(s) => s,
            Text::Secret(s) => s.reveal(),
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, Text::Secret(_))
    }

    /// The secret values within, for redaction (none for plain text).
    pub fn secret_parts(&self) -> &[String] {
        match self {
            Text::Plain(_) => &[],
            Text::Secret(s) => s.parts(),
        }
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Text::Plain(s) => f.write_str(s),
            Text::Secret(s) => s.fmt(f),
        }
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Text::Plain(s) => serializer.serialize_str(s),
            Text::Secret(s) => s.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> serde::de::Visitor<'de> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text::Plain(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Text, A::Error> {
                let secret =
                    Secret::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Text::Secret(secret))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// An evaluated value with the span of the expression it came from.
#[derive(Debug, Clone)]
pub struct SValue {
    pub value: Value,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Secret(Secret),
    List(Vec<SValue>),
    Object(Vec<(String, SValue)>),
    /// A value known only once a `data` block is fetched: what `vmbuild validate` (which fetches
    /// nothing) sees, and what depends on a data block that could not be fetched. Whatever is
    /// computed from it is unknown too, and problems found in it are not reported.
    Unknown,
}

impl Value {
    /// A short name of the type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Secret(_) => "sensitive string",
            Value::List(_) => "list",
            Value::Object(_) => "object",
            Value::Unknown => "value known at plan time",
        }
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Value::Unknown)
    }

    /// Whether any part of the value is sensitive.
    pub fn is_sensitive(&self) -> bool {
        match self {
            Value::Secret(_) => true,
            Value::List(items) => items.iter().any(|i| i.value.is_sensitive()),
            Value::Object(items) => items.iter().any(|(_, v)| v.value.is_sensitive()),
            _ => false,
        }
    }

    /// The value as JSON for typed decoding. Secrets become
    /// `{"$vmbuild::secret": {"identity": ..., "value": ...}}`, which only [`Secret`] and
    /// [`Text`] accept; that JSON is transient and never written anywhere.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Number(n) => J::Number(n.clone()),
            Value::String(s) => J::String(s.clone()),
            Value::Secret(s) => serde_json::json!({
                SECRET_MARKER: { "identity": s.identity, "value": s.value, "parts": s.parts }
            }),
            Value::List(items) => J::Array(items.iter().map(|i| i.value.to_json()).collect()),
            Value::Object(items) => J::Object(
                items
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.to_json()))
                    .collect(),
            ),
            Value::Unknown => J::String(UNKNOWN_PLACEHOLDER.into()),
        }
    }

    /// Every secret value inside, for composing secrets.
    pub fn secret_parts(&self) -> Vec<String> {
        match self {
            Value::Secret(s) => s.parts().to_vec(),
            Value::List(items) => items.iter().flat_map(|i| i.value.secret_parts()).collect(),
            Value::Object(items) => items
                .iter()
                .flat_map(|(_, v)| v.value.secret_parts())
                .collect(),
            _ => vec![],
        }
    }

    /// Text for interpolation into a string, if the value has one.
    pub fn as_interpolated(&self) -> Option<String> {
        match self {
            Value::String(s) => Some(s.clone()),
            Value::Secret(s) => Some(s.reveal().to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}
