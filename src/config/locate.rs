//! Turning places in the configuration into `LINE:COL`.
//!
//! Two kinds of place exist: byte offsets (what toml's errors carry) and key paths
//! (what semantic validation produces, since it works on the typed `Config`, which has
//! no spans). Key paths are resolved against the parsed document (`DeTable`), which
//! keeps the span of every key and value, so a semantic error can point at the exact
//! value that is wrong.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(&'static str),
    Index(usize),
}

impl From<&'static str> for Seg {
    fn from(key: &'static str) -> Self {
        Seg::Key(key)
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Self {
        Seg::Index(index)
    }
}

/// A path from the document root to a value, e.g. `classes[1].uplinks[0]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct KeyPath(pub(crate) Vec<Seg>);

/// `key_path!["classes", i, "uplinks", j]` builds a `KeyPath`.
macro_rules! key_path {
    ($($seg:expr),* $(,)?) => {
        $crate::config::locate::KeyPath(vec![$($crate::config::locate::Seg::from($seg)),*])
    };
}
pub(crate) use key_path;

impl KeyPath {
    /// The same path, one step deeper.
    pub(crate) fn join(&self, seg: impl Into<Seg>) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(seg.into());
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => write!(f, "{key}")?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset. Columns count characters, not bytes, so
/// an editor's "go to column" lands on the right place after non-ASCII text. Offsets
/// past the end (toml reports "unexpected end of input" there) stay on the last line.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // toml's spans always fall on character boundaries; be safe anyway.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let line = before.matches('\n').count() + 1;
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// The span of the value at `path`, or of the nearest parent that exists: a missing
/// required key (say a rule without `class`) is best shown at the table that lacks it.
/// For a table written as `[header]` or `[[header]]` the span is the header.
pub(crate) fn resolve(doc: &Spanned<DeTable<'_>>, path: &KeyPath) -> Range<usize> {
    let mut span = doc.span();
    let mut here: Option<&DeValue<'_>> = None;
    let root = doc.get_ref();
    for seg in &path.0 {
        let next = match (here, seg) {
            (None, Seg::Key(key)) => root.get(*key),
            (Some(DeValue::Table(table)), Seg::Key(key)) => table.get(*key),
            (Some(DeValue::Array(array)), Seg::Index(index)) => array.get(*index),
            _ => None,
        };
        match next {
            Some(value) => {
                span = value.span();
                here = Some(value.get_ref());
            }
            None => break,
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_line_col(text: &str, offset: usize, expected: (usize, usize)) {
        let seen = line_col(text, offset);
        assert_eq!(
            seen, expected,
            "offset {offset} in {text:?}: expected line:col {expected:?}, saw {seen:?}"
        );
    }

    #[test]
    fn line_col_counts_lines_and_characters() {
        let text = "a = 1\nbb = 2\n\nname = \"é\" # x\n";
        check_line_col(text, 0, (1, 1));
        check_line_col(text, 4, (1, 5));
        check_line_col(text, 5, (1, 6)); // the newline itself
        check_line_col(text, 6, (2, 1));
        check_line_col(text, 11, (2, 6));
        check_line_col(text, 13, (3, 1));
        // "é" is two bytes: the byte after it is column 10, not 11.
        let after_e = text.find("é").unwrap() + "é".len();
        check_line_col(text, after_e, (4, 10));
        check_line_col(text, text.len(), (5, 1));
        check_line_col(text, text.len() + 10, (5, 1));
    }

    #[test]
    fn line_col_handles_crlf_and_empty_text() {
        check_line_col("a = 1\r\nb = 2\r\n", 7, (2, 1));
        check_line_col("a = 1\r\nb = 2\r\n", 11, (2, 5));
        check_line_col("", 0, (1, 1));
        // Inside a multi-byte character: rounds down to its start.
        check_line_col("é", 1, (1, 1));
    }

    #[test]
    fn key_path_displays_like_toml_keys() {
        assert_eq!(
            key_path!["classes", 1, "uplinks", 0].to_string(),
            "classes[1].uplinks[0]"
        );
        assert_eq!(key_path!["lan", "interfaces"].to_string(), "lan.interfaces");
        assert_eq!(
            key_path!["rules", 2].join("class").to_string(),
            "rules[2].class"
        );
    }

    const DOC: &str = r#"[lan]
interfaces = ["lan0", "lan1"]

[[uplinks]]
name = "fiber"
health = { probes = ["icmp:192.0.2.1", "tcp:192.0.2.10:443"], interval = "1s" }

[[uplinks]]
name = "lte"

[[classes]]
name = "bulk"
uplinks = ["fiber", "lte"]
"#;

    #[track_caller]
    fn check_path(path: KeyPath, expected: (usize, usize), expected_text: &str) {
        let doc = DeTable::parse(DOC).expect("test document parses");
        let span = resolve(&doc, &path);
        let seen = line_col(DOC, span.start);
        let text = &DOC[span.clone()];
        assert_eq!(
            (seen, text),
            (expected, expected_text),
            "{path}: expected {expected:?} {expected_text:?}, saw {seen:?} {text:?}"
        );
    }

    #[test]
    fn resolve_walks_tables_arrays_of_tables_and_inline_tables() {
        check_path(key_path!["lan", "interfaces", 1], (2, 23), "\"lan1\"");
        check_path(
            key_path!["lan", "interfaces"],
            (2, 14),
            "[\"lan0\", \"lan1\"]",
        );
        check_path(key_path!["lan"], (1, 1), "[lan]");
        check_path(key_path!["uplinks", 1], (8, 1), "[[uplinks]]");
        check_path(key_path!["uplinks", 1, "name"], (9, 8), "\"lte\"");
        check_path(
            key_path!["uplinks", 0, "health", "probes", 1],
            (6, 40),
            "\"tcp:192.0.2.10:443\"",
        );
        check_path(
            key_path!["uplinks", 0, "health", "interval"],
            (6, 74),
            "\"1s\"",
        );
        check_path(key_path!["classes", 0, "uplinks", 1], (13, 21), "\"lte\"");
    }

    #[test]
    fn resolve_falls_back_to_the_nearest_parent() {
        // Missing key: the table that lacks it.
        check_path(key_path!["uplinks", 1, "interface"], (8, 1), "[[uplinks]]");
        check_path(
            key_path!["uplinks", 0, "health", "down_after"],
            (6, 10),
            &DOC[DOC.find('{').unwrap()..DOC.find('}').unwrap() + 1],
        );
        // Index past the end: the array.
        check_path(
            key_path!["classes", 0, "uplinks", 7],
            (13, 11),
            "[\"fiber\", \"lte\"]",
        );
        // Missing top-level table: the document start.
        check_path(key_path!["export", "collectors"], (1, 1), "");
    }
}
