//! The probe file as a located YAML tree, and the typed, path-aware reads the validators use.
//!
//! serde-saphyr parses the text into [`Node`]s (each with the line and column it came from,
//! through `serde_saphyr::Spanned`) instead of into derived DTOs. Walking the tree by hand lets
//! every error name the full key path (`prober_configs[2].http.method`) and point at the key or
//! value at fault, lets unsupported prometheus/common options get their own message instead of
//! serde's "unknown field", and keeps wrong types ("a string where a list is expected") readable.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based line and column in the probe file.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) struct Pos {
    pub(super) line: u64,
    pub(super) column: u64,
}

impl Pos {
    /// The start of the file, for errors that concern the file as a whole.
    pub(super) const START: Self = Self { line: 1, column: 1 };

    fn from_location(location: serde_saphyr::Location) -> Self {
        // serde-saphyr reports line 0 only for "unknown"; point at the file start then.
        if location.line() == 0 {
            Self::START
        } else {
            Self {
                line: location.line(),
                column: location.column(),
            }
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// A validation failure before the source name is attached: where, and what is wrong.
#[derive(Clone, Debug, Eq, PartialEq)]
pub(super) struct Problem {
    pub(super) at: Pos,
    pub(super) message: String,
}

impl Problem {
    /// A problem at `at` for the key `path`: the message reads "`path`: `what`".
    pub(super) fn at(at: Pos, path: &str, what: impl fmt::Display) -> Self {
        Self {
            at,
            message: format!("{path}: {what}"),
        }
    }
}

/// One YAML node with the place it is used (for an alias: the alias, not the anchor).
#[derive(Debug)]
pub(super) struct Node {
    pub(super) value: Value,
    pub(super) at: Pos,
    /// Byte range of the defining scalar in the source, to recover the written text of plain
    /// scalars that YAML typed as numbers or booleans (`region: 1`, `interval: 0`).
    source_bytes: Option<(usize, usize)>,
    /// That written text, filled in by [`Node::attach_text`].
    text: Option<String>,
}

/// The value of a [`Node`], typed the YAML 1.2 core-schema way.
#[derive(Debug)]
pub(super) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// How the value is described in error messages ("found a list").
    fn describe(&self) -> String {
        match self {
            Self::Null => "nothing (null)".to_owned(),
            Self::Bool(b) => format!("the boolean {b}"),
            Self::Int(i) => format!("the integer {i}"),
            Self::Float(x) => format!("the number {x}"),
            Self::Str(s) => format!("the string {:?}", shorten(s)),
            Self::Seq(_) => "a list".to_owned(),
            Self::Map(_) => "a mapping".to_owned(),
        }
    }
}

pub(super) use crate::model::setting::shorten;

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(deserializer)?;
        let span = spanned.defined.span();
        let source_bytes = match (span.byte_offset(), span.byte_len()) {
            (Some(offset), Some(len)) => {
                usize::try_from(offset).ok().zip(usize::try_from(len).ok())
            }
            _ => None,
        };
        Ok(Self {
            value: spanned.value,
            at: Pos::from_location(spanned.referenced),
            source_bytes,
            text: None,
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("the integer {v} is out of range")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Node, Node>()? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value, E> {
        Err(E::custom(
            "binary (!!binary) values are not supported in the probe file",
        ))
    }
}

impl Node {
    /// Records the written text of every plain scalar that YAML typed as a number or boolean,
    /// so that string fields can take it verbatim (as Go's yaml.v3 does).
    pub(super) fn attach_text(&mut self, source: &str) {
        match &mut self.value {
            Value::Bool(_) | Value::Int(_) | Value::Float(_) => {
                self.text = self
                    .source_bytes
                    .and_then(|(start, len)| source.get(start..start.checked_add(len)?))
                    .map(str::to_owned);
            }
            Value::Seq(items) => items.iter_mut().for_each(|item| item.attach_text(source)),
            Value::Map(entries) => entries.iter_mut().for_each(|(key, value)| {
                key.attach_text(source);
                value.attach_text(source);
            }),
            Value::Null | Value::Str(_) => {}
        }
    }

    /// Whether the node is null (`~`, `null` or nothing), which every optional key treats as
    /// absent.
    pub(super) fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    fn wrong_type(&self, path: &str, expected: &str) -> Problem {
        Problem::at(
            self.at,
            path,
            format!("expected {expected}, found {}", self.value.describe()),
        )
    }

    /// The scalar as text: strings as they are, numbers and booleans as written.
    pub(super) fn string(&self, path: &str) -> Result<String, Problem> {
        match (&self.value, &self.text) {
            (Value::Str(s), _) => Ok(s.clone()),
            (Value::Bool(_) | Value::Int(_) | Value::Float(_), Some(text)) => Ok(text.clone()),
            _ => Err(self.wrong_type(path, "a string")),
        }
    }

    /// A boolean: `true`/`false`, or the YAML 1.1 spellings Go's yaml.v3 accepts for booleans.
    pub(super) fn boolean(&self, path: &str) -> Result<bool, Problem> {
        match &self.value {
            Value::Bool(b) => Ok(*b),
            Value::Str(s) => match s.as_str() {
                "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Ok(true),
                "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Ok(false),
                _ => Err(self.wrong_type(path, "true or false")),
            },
            _ => Err(self.wrong_type(path, "true or false")),
        }
    }

    /// An integer of any sign.
    pub(super) fn integer(&self, path: &str) -> Result<i128, Problem> {
        match &self.value {
            Value::Int(i) => Ok(*i),
            _ => Err(self.wrong_type(path, "an integer")),
        }
    }

    /// The items of a list; a scalar gets a hint on how to write a list.
    pub(super) fn list(&self, path: &str) -> Result<&[Node], Problem> {
        match &self.value {
            Value::Seq(items) => Ok(items),
            Value::Map(_) | Value::Null => Err(self.wrong_type(path, "a list")),
            _ => Err(Problem::at(
                self.at,
                path,
                format!(
                    "expected a list, found {}; write a one-item list as `[item]` or as `- item` on the next line",
                    self.value.describe()
                ),
            )),
        }
    }

    /// The entries of a mapping whose keys must all be in `known`; keys in `unsupported` get
    /// the reason they are refused, any other key is an unknown-key error at the key.
    pub(super) fn fields<'a>(
        &'a self,
        path: &str,
        known: &[&str],
        unsupported: &[(&str, &str)],
    ) -> Result<Fields<'a>, Problem> {
        let Value::Map(entries) = &self.value else {
            return Err(self.wrong_type(path, "a mapping of keys to values"));
        };
        let mut fields = Vec::with_capacity(entries.len());
        for (key_node, value) in entries {
            let key = match &key_node.value {
                Value::Str(s) => s.as_str(),
                _ => key_node.text.as_deref().unwrap_or_default(),
            };
            if key.is_empty() && !matches!(key_node.value, Value::Str(_)) {
                return Err(key_node.wrong_type(path, "a key name"));
            }
            if let Some((_, why)) = unsupported.iter().find(|(name, _)| *name == key) {
                return Err(Problem::at(
                    key_node.at,
                    &join(path, key),
                    format!("this option is not supported by probermesh; {why}"),
                ));
            }
            if !known.contains(&key) {
                return Err(Problem::at(
                    key_node.at,
                    path,
                    format!(
                        "unknown key `{}`; the keys allowed here are: {}",
                        shorten(key),
                        known.join(", ")
                    ),
                ));
            }
            fields.push(Field {
                key,
                key_at: key_node.at,
                value,
            });
        }
        Ok(Fields {
            at: self.at,
            fields,
        })
    }

    /// A mapping whose keys are free-form (request headers): the key text, its position and value.
    pub(super) fn entries<'a>(
        &'a self,
        path: &str,
    ) -> Result<Vec<(String, Pos, &'a Node)>, Problem> {
        let Value::Map(entries) = &self.value else {
            return Err(self.wrong_type(path, "a mapping of names to values"));
        };
        entries
            .iter()
            .map(|(key, value)| Ok((key.string(path)?, key.at, value)))
            .collect()
    }
}

/// `parent.key`, or `key` at the top.
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

struct Field<'a> {
    key: &'a str,
    key_at: Pos,
    value: &'a Node,
}

/// The checked keys of one mapping.
pub(super) struct Fields<'a> {
    /// Where the mapping starts (its first key).
    pub(super) at: Pos,
    fields: Vec<Field<'a>>,
}

impl<'a> Fields<'a> {
    /// The value of `key`, or `None` when the key is absent or null.
    pub(super) fn get(&self, key: &str) -> Option<&'a Node> {
        self.fields
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.value)
            .filter(|v| !v.is_null())
    }

    /// Where `key` is written, if it is.
    pub(super) fn key_at(&self, key: &str) -> Option<Pos> {
        self.fields.iter().find(|f| f.key == key).map(|f| f.key_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(yaml: &str) -> Node {
        let mut node: Node = serde_saphyr::from_str(yaml).unwrap();
        node.attach_text(yaml);
        node
    }

    #[test]
    fn nodes_carry_line_and_column() {
        let root = tree("a:\n  b: [x, 'y']\n");
        let fields = root.fields("", &["a"], &[]).unwrap();
        assert_eq!(fields.key_at("a"), Some(Pos { line: 1, column: 1 }));
        let inner = fields.get("a").unwrap().fields("a", &["b"], &[]).unwrap();
        let list = inner.get("b").unwrap().list("a.b").unwrap();
        assert_eq!(
            list[1].at,
            Pos {
                line: 2,
                column: 10
            }
        );
        assert_eq!(list[1].string("a.b[1]").unwrap(), "y");
    }

    #[test]
    fn numbers_and_booleans_read_as_written_strings() {
        let root = tree("a: 1.10\nb: true\nc: 0x10\n");
        let f = root.fields("", &["a", "b", "c"], &[]).unwrap();
        assert_eq!(f.get("a").unwrap().string("a").unwrap(), "1.10");
        assert_eq!(f.get("b").unwrap().string("b").unwrap(), "true");
        assert_eq!(f.get("c").unwrap().integer("c").unwrap(), 16);
    }

    #[test]
    fn wrong_types_say_what_was_found() {
        let root = tree("a: text.*\nb: [1]\n");
        let f = root.fields("", &["a", "b"], &[]).unwrap();
        let err = f.get("a").unwrap().list("a").unwrap_err();
        assert_eq!(err.at, Pos { line: 1, column: 4 });
        assert!(
            err.message
                .starts_with("a: expected a list, found the string \"text.*\""),
            "{}",
            err.message
        );
        let err = f.get("b").unwrap().string("b").unwrap_err();
        assert_eq!(err.message, "b: expected a string, found a list");
    }

    #[test]
    fn unknown_and_unsupported_keys_point_at_the_key() {
        let root = tree("x:\n  good: 1\n  bad: 2\n");
        let inner = root.fields("", &["x"], &[]).unwrap().get("x").unwrap();
        let err = inner.fields("x", &["good"], &[]).err().unwrap();
        assert_eq!(err.at, Pos { line: 3, column: 3 });
        assert_eq!(
            err.message,
            "x: unknown key `bad`; the keys allowed here are: good"
        );
        let err = inner
            .fields("x", &["good"], &[("bad", "use good")])
            .err()
            .unwrap();
        assert_eq!(
            err.message,
            "x.bad: this option is not supported by probermesh; use good"
        );
    }
}
