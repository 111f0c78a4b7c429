//! The provider catalog: which AI service a host name belongs to.
//!
//! The built-in catalog is data, `catalog/providers.toml`, embedded at build time and
//! parsed once. The configuration's `[[providers]]` tables add providers, add hosts to
//! built-in ones and override their class ([`Catalog::from_config`]).
//!
//! Host patterns come in three shapes (see the catalog file's header):
//! - exact: `api.openai.com`;
//! - suffix: `*.openai.azure.com`, any name strictly below the suffix;
//! - region: `bedrock-runtime.*.amazonaws.com`, exactly one label in place of `*`.
//!
//! When several match, exact beats region beats suffix, and a longer suffix beats a
//! shorter one. Patterns live in a trie of labels read from the right (`com`,
//! `openai`, `api`), so a lookup walks the name's labels once, whatever the number of
//! patterns; a region wildcard on the path adds one short walk of the labels left of
//! it.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde::Deserialize;
use thiserror::Error;

use crate::config::Config;

/// The provider classes: the kinds of traffic a provider carries. A provider's class
/// is its default; rules place flows in the configuration's classes.
pub const CLASSES: [&str; 3] = ["interactive", "chat", "bulk"];

/// The class of a provider added in the configuration without `class`.
pub const DEFAULT_CLASS: &str = "interactive";

/// `source` of providers added in the configuration.
pub const CONFIG_SOURCE: &str = "config";

/// Where the built-in catalog lives in the repository, for messages.
pub const BUILTIN_PATH: &str = "catalog/providers.toml";

const BUILTIN_TEXT: &str = include_str!("../../catalog/providers.toml");

/// RFC 1035: at most 253 characters in the text form (without the trailing dot), 63
/// per label.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Ids are 16 bits and 0 means "unknown".
const MAX_PROVIDERS: usize = u16::MAX as usize;

/// One AI service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// 1..=N in catalog order, configuration additions after; 0 is "unknown".
    pub id: u16,
    /// What rules name: lowercase letters, digits, '_' and '-'.
    pub name: String,
    /// What people read.
    pub display: String,
    /// One of [`CLASSES`].
    pub class: String,
    /// Host patterns, normalized (lowercase, no trailing dot), built-in ones first.
    pub hosts: Vec<String>,
    /// The documentation page the hosts come from, or [`CONFIG_SOURCE`].
    pub source: String,
    /// A kind of self-hosted server (no hosts): recognised by its plaintext
    /// requests on the inference ports.
    pub self_hosted: bool,
}

/// A problem with a catalog: the built-in file (a bug caught by the tests) or the
/// configuration's additions (caught first, with positions, by config validation).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CatalogError {
    #[error("{BUILTIN_PATH}: {0}")]
    Syntax(String),
    #[error("invalid provider name {name:?}: {problem}")]
    Name { name: String, problem: &'static str },
    #[error("duplicate provider name {0:?}")]
    DuplicateName(String),
    #[error(
        "provider {provider:?}: unknown class {class:?}; use \"interactive\", \"chat\" or \"bulk\""
    )]
    Class { provider: String, class: String },
    #[error("provider {0:?} has no hosts")]
    NoHosts(String),
    #[error("provider {provider:?}: invalid host pattern {pattern:?}: {problem}")]
    Pattern {
        provider: String,
        pattern: String,
        problem: String,
    },
    #[error(
        "provider {provider:?}: host pattern {pattern:?} already belongs to provider {owner:?}"
    )]
    HostTaken {
        provider: String,
        pattern: String,
        owner: String,
    },
    #[error("provider {provider:?}: {field} must not be empty")]
    Empty {
        provider: String,
        field: &'static str,
    },
    #[error("provider {provider:?}: source {url:?} is not an https:// URL")]
    Source { provider: String, url: String },
    #[error("more than {MAX_PROVIDERS} providers; provider ids are 16 bits")]
    TooMany,
}

/// The providers and an index of their host patterns.
#[derive(Debug, Clone)]
pub struct Catalog {
    providers: Vec<Provider>,
    by_name: HashMap<String, usize>,
    trie: Trie,
}

/// The catalog file: `[[provider]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    provider: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    display: String,
    class: String,
    #[serde(default)]
    hosts: Vec<String>,
    source: String,
    /// A kind of self-hosted inference server, recognised by its plaintext
    /// requests on the configured inference ports rather than by a host name.
    #[serde(default)]
    self_hosted: bool,
}

impl Catalog {
    /// The built-in catalog. The embedded file is parsed on first use; its tests
    /// (`cargo test catalog`) prove it parses, so the panic below is unreachable in a
    /// build whose tests pass.
    pub fn builtin() -> Catalog {
        builtin_ref().clone()
    }

    /// The built-in catalog plus the configuration's `[[providers]]`. A configuration
    /// that passed validation always succeeds.
    pub fn from_config(config: &Config) -> Result<Catalog, Vec<CatalogError>> {
        let mut builder = Builder::from(builtin_ref().clone());
        let mut seen = HashSet::new();
        for entry in &config.providers {
            if !seen.insert(entry.name.as_str()) {
                builder
                    .errors
                    .push(CatalogError::DuplicateName(entry.name.clone()));
                continue;
            }
            if let Some(&index) = builder.catalog.by_name.get(&entry.name) {
                let provider = &mut builder.catalog.providers[index];
                if let Some(class) = &entry.class {
                    provider.class = class.clone();
                }
                if let Some(display) = &entry.display {
                    provider.display = display.clone();
                }
                builder.check_fields(index);
                builder.add_hosts(index, &entry.hosts);
            } else {
                builder.add(Provider {
                    id: 0,
                    name: entry.name.clone(),
                    display: entry.display.clone().unwrap_or_else(|| entry.name.clone()),
                    class: entry
                        .class
                        .clone()
                        .unwrap_or_else(|| DEFAULT_CLASS.to_owned()),
                    hosts: entry.hosts.clone(),
                    source: CONFIG_SOURCE.to_owned(),
                    self_hosted: false,
                });
            }
        }
        builder.finish()
    }

    /// Parses a catalog file (the format of `catalog/providers.toml`).
    pub fn from_toml(text: &str) -> Result<Catalog, Vec<CatalogError>> {
        let file: CatalogFile = toml::from_str(text)
            .map_err(|e| vec![CatalogError::Syntax(e.to_string().trim_end().to_owned())])?;
        let mut builder = Builder::from(Catalog {
            providers: Vec::new(),
            by_name: HashMap::new(),
            trie: Trie::default(),
        });
        for entry in file.provider {
            if !entry.source.starts_with("https://") || entry.source.len() <= "https://".len() {
                builder.errors.push(CatalogError::Source {
                    provider: entry.name.clone(),
                    url: entry.source.clone(),
                });
            }
            builder.add(Provider {
                id: 0,
                name: entry.name,
                display: entry.display,
                class: entry.class,
                hosts: entry.hosts,
                source: entry.source,
                self_hosted: entry.self_hosted,
            });
        }
        builder.finish()
    }

    /// The provider `host` belongs to: the most specific pattern wins (exact, then
    /// region wildcard, then the longest `*.` suffix). Case does not matter and a
    /// trailing dot is ignored; a malformed name (empty label, too long) matches
    /// nothing.
    pub fn lookup(&self, host: &str) -> Option<&Provider> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() || host.len() > MAX_NAME_LEN || host.split('.').any(str::is_empty) {
            return None;
        }
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        self.trie
            .find(host)
            .map(|index| &self.providers[usize::from(index)])
    }

    pub fn by_name(&self, name: &str) -> Option<&Provider> {
        self.by_name.get(name).map(|&index| &self.providers[index])
    }

    pub fn by_id(&self, id: u16) -> Option<&Provider> {
        usize::from(id)
            .checked_sub(1)
            .and_then(|index| self.providers.get(index))
    }

    /// In id order.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// The names the datapath recognises in DNS answers itself (dns_names): exact
    /// names and `*.` suffixes. Region wildcards stay with the daemon, and so do
    /// the suffixes a region wildcard could outrank (a name under both must get
    /// the region's provider, which only the daemon knows). A kernel match is
    /// therefore always the provider [`Catalog::lookup`] gives; names it misses
    /// are learned by the daemon a moment later.
    pub fn kernel_names(&self) -> Vec<(u64, crate::bpf::abi::DnsName)> {
        let regions: Vec<&str> = self
            .providers
            .iter()
            .flat_map(|p| p.hosts.iter())
            .filter(|h| !h.starts_with("*.") && h.contains('*'))
            .filter_map(|h| h.split_once("*.").map(|(_, tail)| tail))
            .collect();
        let mut names: std::collections::BTreeMap<&str, crate::bpf::abi::DnsName> = Default::default();
        for p in &self.providers {
            for h in &p.hosts {
                if let Some(suffix) = h.strip_prefix("*.") {
                    let shadowed = regions.iter().any(|t| *t == suffix || t.ends_with(&format!(".{suffix}")));
                    if !suffix.contains('*') && !shadowed {
                        names.entry(suffix).or_default().wildcard = p.id;
                    }
                } else if !h.contains('*') {
                    names.entry(h.as_str()).or_default().exact = p.id;
                }
            }
        }
        names.into_iter().map(|(n, v)| (crate::bpf::abi::dns_suffix_hash(n), v)).collect()
    }

    /// The provider that lists exactly this pattern (after normalizing it), if any.
    /// Not a lookup: `"*.openai.azure.com"` is owned by azure-openai, while
    /// `"x.openai.azure.com"` is owned by nobody.
    pub fn pattern_owner(&self, pattern: &str) -> Option<&Provider> {
        let pattern = normalize_pattern(pattern).ok()?;
        self.trie
            .slot_of(&pattern)
            .map(|index| &self.providers[usize::from(index)])
    }
}

fn builtin_ref() -> &'static Catalog {
    static BUILTIN: OnceLock<Catalog> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        Catalog::from_toml(BUILTIN_TEXT).unwrap_or_else(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!(
                "the built-in provider catalog {BUILTIN_PATH} is invalid (its tests fail on this tree):\n{}",
                list.join("\n")
            )
        })
    })
}

/// Assembles a catalog, collecting every problem.
struct Builder {
    catalog: Catalog,
    errors: Vec<CatalogError>,
}

impl From<Catalog> for Builder {
    fn from(catalog: Catalog) -> Self {
        Builder {
            catalog,
            errors: Vec::new(),
        }
    }
}

impl Builder {
    fn add(&mut self, mut provider: Provider) {
        let name = provider.name.clone();
        if let Some(problem) = name_problem(&name) {
            self.errors.push(CatalogError::Name { name, problem });
            return;
        }
        if self.catalog.by_name.contains_key(&name) {
            self.errors.push(CatalogError::DuplicateName(name));
            return;
        }
        if self.catalog.providers.len() >= MAX_PROVIDERS {
            self.errors.push(CatalogError::TooMany);
            return;
        }
        if provider.hosts.is_empty() && !provider.self_hosted {
            self.errors.push(CatalogError::NoHosts(name.clone()));
        }
        let index = self.catalog.providers.len();
        let hosts = std::mem::take(&mut provider.hosts);
        provider.id = u16::try_from(index + 1).expect("bounded by MAX_PROVIDERS");
        self.catalog.providers.push(provider);
        self.catalog.by_name.insert(name, index);
        self.check_fields(index);
        self.add_hosts(index, &hosts);
    }

    fn check_fields(&mut self, index: usize) {
        let provider = &self.catalog.providers[index];
        if !CLASSES.contains(&provider.class.as_str()) {
            self.errors.push(CatalogError::Class {
                provider: provider.name.clone(),
                class: provider.class.clone(),
            });
        }
        if provider.display.trim().is_empty() {
            self.errors.push(CatalogError::Empty {
                provider: provider.name.clone(),
                field: "display",
            });
        }
    }

    fn add_hosts(&mut self, index: usize, hosts: &[String]) {
        let slot = u16::try_from(index).expect("bounded by MAX_PROVIDERS");
        for host in hosts {
            let provider = &self.catalog.providers[index];
            let pattern = match normalize_pattern(host) {
                Ok(pattern) => pattern,
                Err(problem) => {
                    self.errors.push(CatalogError::Pattern {
                        provider: provider.name.clone(),
                        pattern: host.clone(),
                        problem,
                    });
                    continue;
                }
            };
            match self.catalog.trie.insert(&pattern, slot) {
                Ok(()) => self.catalog.providers[index].hosts.push(pattern),
                Err(owner) => self.errors.push(CatalogError::HostTaken {
                    provider: provider.name.clone(),
                    pattern: host.clone(),
                    owner: self.catalog.providers[usize::from(owner)].name.clone(),
                }),
            }
        }
    }

    fn finish(self) -> Result<Catalog, Vec<CatalogError>> {
        if self.errors.is_empty() {
            Ok(self.catalog)
        } else {
            Err(self.errors)
        }
    }
}

/// Provider names: short tokens safe in metric labels and log lines.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        Some("use only lowercase letters, digits, '_' and '-'")
    } else {
        None
    }
}

/// The pattern in its canonical form (lowercase, no trailing dot), or why it is not
/// a host pattern. Labels are letters, digits and '-' (not at either end), at most
/// 63 characters; the whole at most 253. One `*` is allowed, as a whole label: the
/// first (`*.example.com`, any depth below) or an inner one (`api.*.example.com`,
/// exactly one label). At least two labels must follow it, so a pattern cannot take
/// a whole top-level domain.
pub fn normalize_pattern(pattern: &str) -> Result<String, String> {
    let text = pattern.strip_suffix('.').unwrap_or(pattern);
    if text.is_empty() {
        return Err("empty".into());
    }
    if text.len() > MAX_NAME_LEN {
        return Err(format!(
            "{} characters long, a DNS name has at most {MAX_NAME_LEN}",
            text.len()
        ));
    }
    let text = text.to_ascii_lowercase();
    let labels: Vec<&str> = text.split('.').collect();
    let mut wildcard = None;
    for (i, label) in labels.iter().enumerate() {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)".into());
        }
        if *label == "*" {
            if wildcard.is_some() {
                return Err("more than one \"*\"; a pattern has at most one wildcard".into());
            }
            wildcard = Some(i);
            continue;
        }
        if label.contains('*') {
            return Err(
                "\"*\" must be a whole label, as in \"*.example.com\" or \"api.*.example.com\""
                    .into(),
            );
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "label {label:?} is {} characters long, at most {MAX_LABEL_LEN}",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(if bad.is_ascii() {
                format!("{bad:?} is not allowed; use letters, digits and '-'")
            } else {
                format!("{bad:?} is not allowed; write international names in their xn-- form")
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    if let Some(i) = wildcard {
        if labels.len() - i - 1 < 2 {
            return Err(
                "a wildcard needs at least two labels after it, as in \"*.example.com\"".into(),
            );
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(
            "ends in a number: an IP address is not a host pattern; match addresses with a rule's destinations"
                .into(),
        );
    }
    Ok(text)
}

/// Host patterns by label, read from the right. `nodes[0]` is the root (the empty
/// suffix). A node stands for a suffix such as `openai.azure.com`; its slots hold
/// the index of the provider whose pattern is that suffix exactly (`exact`) or
/// `*.` + that suffix (`below`). A `*` inside a pattern is the `any` child, which
/// stands for one label of any spelling.
#[derive(Debug, Clone)]
struct Trie {
    nodes: Vec<Node>,
}

impl Default for Trie {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::default()],
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Node {
    children: HashMap<Box<str>, u32>,
    any: Option<u32>,
    exact: Option<u16>,
    below: Option<u16>,
}

impl Trie {
    /// Files a normalized pattern under provider `index`, or returns the index of the
    /// provider that already has it.
    fn insert(&mut self, pattern: &str, index: u16) -> Result<(), u16> {
        let (below, rest) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let mut node = 0usize;
        for label in rest.rsplit('.') {
            node = self.child(node, label);
        }
        let node = &mut self.nodes[node];
        let slot = if below {
            &mut node.below
        } else {
            &mut node.exact
        };
        match *slot {
            Some(owner) => Err(owner),
            None => {
                *slot = Some(index);
                Ok(())
            }
        }
    }

    /// The child of `node` for `label` (`*`: the any child), created if missing.
    fn child(&mut self, node: usize, label: &str) -> usize {
        let next = u32::try_from(self.nodes.len()).expect("fewer than 2^32 labels");
        let existing = if label == "*" {
            self.nodes[node].any
        } else {
            self.nodes[node].children.get(label).copied()
        };
        if let Some(existing) = existing {
            return existing as usize;
        }
        if label == "*" {
            self.nodes[node].any = Some(next);
        } else {
            self.nodes[node].children.insert(label.into(), next);
        }
        self.nodes.push(Node::default());
        next as usize
    }

    /// The provider that owns exactly this normalized pattern.
    fn slot_of(&self, pattern: &str) -> Option<u16> {
        let (below, rest) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let mut node = &self.nodes[0];
        for label in rest.rsplit('.') {
            let next = if label == "*" {
                node.any
            } else {
                node.children.get(label).copied()
            }?;
            node = &self.nodes[next as usize];
        }
        if below {
            node.below
        } else {
            node.exact
        }
    }

    /// The best match for a lowercase host name without empty labels.
    fn find(&self, host: &str) -> Option<u16> {
        let mut labels = host.rsplit('.');
        let mut node = &self.nodes[0];
        let mut region = None;
        let mut suffix = None;
        while let Some(label) = labels.next() {
            // `label` exists, so the name is strictly below this node's suffix. Later
            // (deeper) candidates are longer suffixes and overwrite earlier ones.
            if node.below.is_some() {
                suffix = node.below;
            }
            if let Some(any) = node.any {
                // The wildcard takes `label`; the rest must match literally.
                if let Some(hit) = self.find_exact(any, labels.clone()) {
                    region = Some(hit);
                }
            }
            match node.children.get(label) {
                Some(&next) => node = &self.nodes[next as usize],
                None => return region.or(suffix),
            }
        }
        node.exact.or(region).or(suffix)
    }

    fn find_exact<'a>(&self, start: u32, labels: impl Iterator<Item = &'a str>) -> Option<u16> {
        let mut node = &self.nodes[start as usize];
        for label in labels {
            node = &self.nodes[*node.children.get(label)? as usize];
        }
        node.exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn catalog(text: &str) -> Catalog {
        Catalog::from_toml(text)
            .unwrap_or_else(|e| panic!("expected the catalog to parse, got {e:?}"))
    }

    /// A catalog of (name, class, hosts).
    fn small(entries: &[(&str, &str, &[&str])]) -> Catalog {
        let mut text = String::new();
        for (name, class, hosts) in entries {
            let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
            text.push_str(&format!(
                "[[provider]]\nname = {name:?}\ndisplay = {name:?}\nclass = {class:?}\nhosts = [{}]\nsource = \"https://example.com/{name}\"\n",
                hosts.join(", ")
            ));
        }
        catalog(&text)
    }

    #[track_caller]
    fn expect_lookup(catalog: &Catalog, host: &str, expected: Option<&str>) {
        let seen = catalog.lookup(host).map(|p| p.name.as_str());
        assert_eq!(
            seen, expected,
            "lookup({host:?}): expected {expected:?}, saw {seen:?}"
        );
    }

    #[test]
    fn builtin_parses_with_unique_names_and_ids() {
        let catalog = Catalog::from_toml(BUILTIN_TEXT)
            .unwrap_or_else(|e| panic!("{BUILTIN_PATH} must parse, got:\n{e:#?}"));
        let providers = catalog.providers();
        assert!(
            providers.len() >= 25,
            "expected at least 25 providers, saw {}",
            providers.len()
        );
        for (i, provider) in providers.iter().enumerate() {
            assert_eq!(
                usize::from(provider.id),
                i + 1,
                "{} has id {}",
                provider.name,
                provider.id
            );
            assert_eq!(catalog.by_id(provider.id), Some(provider));
            assert_eq!(catalog.by_name(&provider.name), Some(provider));
        }
        assert_eq!(catalog.by_id(0), None, "id 0 is unknown");
        assert_eq!(catalog.by_id(providers.len() as u16 + 1), None);
    }

    #[test]
    fn every_builtin_host_maps_back_to_its_provider() {
        let catalog = Catalog::builtin();
        for provider in catalog.providers() {
            for pattern in &provider.hosts {
                // A concrete name for each shape.
                let host = if let Some(rest) = pattern.strip_prefix("*.") {
                    format!("x1.{rest}")
                } else {
                    pattern.replace('*', "us-east-1")
                };
                expect_lookup(&catalog, &host, Some(&provider.name));
                assert_eq!(
                    catalog.pattern_owner(pattern).map(|p| p.name.as_str()),
                    Some(provider.name.as_str())
                );
            }
        }
    }

    #[test]
    fn suffix_matches_strictly_below_at_any_depth() {
        let c = small(&[("azure", "interactive", &["*.openai.azure.com"])]);
        expect_lookup(&c, "myres.openai.azure.com", Some("azure"));
        expect_lookup(&c, "a.b.openai.azure.com", Some("azure"));
        expect_lookup(&c, "openai.azure.com", None);
        expect_lookup(&c, "azure.com", None);
        expect_lookup(&c, "myres.openai.azure.com.evil.example", None);
        expect_lookup(&c, "myres.notopenai.azure.com", None);
    }

    #[test]
    fn region_wildcard_takes_exactly_one_label() {
        let c = small(&[(
            "bedrock",
            "interactive",
            &["bedrock-runtime.*.amazonaws.com"],
        )]);
        expect_lookup(
            &c,
            "bedrock-runtime.us-east-1.amazonaws.com",
            Some("bedrock"),
        );
        expect_lookup(
            &c,
            "bedrock-runtime.eu-central-1.amazonaws.com",
            Some("bedrock"),
        );
        expect_lookup(&c, "bedrock-runtime.a.b.amazonaws.com", None);
        expect_lookup(&c, "bedrock-runtime.amazonaws.com", None);
        expect_lookup(&c, "x.bedrock-runtime.us-east-1.amazonaws.com", None);
        expect_lookup(&c, "bedrock.us-east-1.amazonaws.com", None);
    }

    #[test]
    fn most_specific_pattern_wins() {
        let c = small(&[
            ("suffix", "bulk", &["*.amazonaws.com"]),
            ("longer", "bulk", &["*.us-east-1.amazonaws.com"]),
            ("region", "interactive", &["api.*.amazonaws.com"]),
            (
                "exact",
                "chat",
                &["api.us-east-1.amazonaws.com", "amazonaws.com"],
            ),
        ]);
        expect_lookup(&c, "api.us-east-1.amazonaws.com", Some("exact"));
        // A region wildcard beats even a longer suffix.
        expect_lookup(&c, "api.eu-west-1.amazonaws.com", Some("region"));
        expect_lookup(&c, "s3.us-east-1.amazonaws.com", Some("longer"));
        expect_lookup(&c, "s3.eu-west-1.amazonaws.com", Some("suffix"));
        expect_lookup(&c, "amazonaws.com", Some("exact"));
        expect_lookup(&c, "com", None);

        // Two region wildcards on one name: the one with the longer fixed suffix.
        let c = small(&[
            ("outer", "bulk", &["a.b.*.example.com"]),
            ("inner", "bulk", &["a.*.c.example.com"]),
        ]);
        expect_lookup(&c, "a.b.c.example.com", Some("inner"));
        expect_lookup(&c, "a.b.x.example.com", Some("outer"));
        expect_lookup(&c, "a.x.c.example.com", Some("inner"));
        expect_lookup(&c, "a.x.y.example.com", None);
    }

    #[test]
    fn case_and_trailing_dot_do_not_matter() {
        let c = small(&[("openai", "interactive", &["API.OpenAI.com."])]);
        assert_eq!(c.by_name("openai").unwrap().hosts, ["api.openai.com"]);
        expect_lookup(&c, "api.openai.com", Some("openai"));
        expect_lookup(&c, "API.OPENAI.COM", Some("openai"));
        expect_lookup(&c, "api.openai.com.", Some("openai"));
        for bad in [
            "",
            ".",
            "api.openai.com..",
            "api..openai.com",
            ".api.openai.com",
        ] {
            expect_lookup(&c, bad, None);
        }
        expect_lookup(&c, "notopenai.com", None);
        expect_lookup(&c, "api.openai.com.evil.example", None);
        expect_lookup(&c, "openai.com", None);
        expect_lookup(&c, &format!("{}.api.openai.com", "a.".repeat(130)), None);
    }

    #[test]
    fn patterns_are_checked() {
        let ok = [
            ("api.openai.com", "api.openai.com"),
            ("*.openai.azure.com", "*.openai.azure.com"),
            (
                "Bedrock-Runtime.*.AmazonAWS.com.",
                "bedrock-runtime.*.amazonaws.com",
            ),
            ("localhost", "localhost"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ];
        for (input, normal) in ok {
            assert_eq!(normalize_pattern(input).as_deref(), Ok(normal), "{input:?}");
        }
        let bad = [
            ("", "empty"),
            (".", "empty"),
            ("api..openai.com", "empty label"),
            (".api.openai.com", "empty label"),
            ("*", "at least two labels"),
            ("*.com", "at least two labels"),
            ("api.*.com", "at least two labels"),
            ("example.*", "at least two labels"),
            ("*.*.example.com", "more than one"),
            ("api*.openai.com", "whole label"),
            ("*-aiplatform.googleapis.com", "whole label"),
            ("api_v1.example.com", "'_' is not allowed"),
            ("api.example.com/v1", "'/' is not allowed"),
            ("https://api.example.com", "':' is not allowed"),
            ("bücher.example", "xn--"),
            ("-api.example.com", "starts or ends with '-'"),
            ("192.0.2.1", "IP address"),
        ];
        for (input, needle) in bad {
            match normalize_pattern(input) {
                Ok(normal) => {
                    panic!("{input:?}: expected an error containing {needle:?}, saw Ok({normal:?})")
                }
                Err(problem) => assert!(
                    problem.contains(needle),
                    "{input:?}: expected {needle:?} in {problem:?}"
                ),
            }
        }
        let long_label = format!("{}.example.com", "a".repeat(64));
        assert!(normalize_pattern(&long_label)
            .unwrap_err()
            .contains("at most 63"));
        let long_name = format!("{}example.com", "abcdefghi.".repeat(25));
        assert!(normalize_pattern(&long_name)
            .unwrap_err()
            .contains("at most 253"));
    }

    #[test]
    fn broken_catalogs_report_every_problem() {
        let text = r#"
[[provider]]
name = "Bad Name"
display = "x"
class = "interactive"
hosts = ["a.example.com"]
source = "https://example.com"

[[provider]]
name = "one"
display = "One"
class = "fast"
hosts = ["api.example.com", "api..example.com"]
source = "http://example.com"

[[provider]]
name = "one"
display = "One again"
class = "bulk"
hosts = ["x.example.com"]
source = "https://example.com"

[[provider]]
name = "two"
display = " "
class = "bulk"
hosts = ["API.example.com"]
source = "https://example.com"

[[provider]]
name = "three"
display = "Three"
class = "bulk"
hosts = []
source = "https://example.com"
"#;
        let errors: Vec<String> = Catalog::from_toml(text)
            .expect_err("the catalog is broken")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "invalid provider name \"Bad Name\": use only lowercase letters, digits, '_' and '-'",
                "provider \"one\": source \"http://example.com\" is not an https:// URL",
                "provider \"one\": unknown class \"fast\"; use \"interactive\", \"chat\" or \"bulk\"",
                "provider \"one\": invalid host pattern \"api..example.com\": empty label (two dots in a row, or a leading dot)",
                "duplicate provider name \"one\"",
                "provider \"two\": display must not be empty",
                "provider \"two\": host pattern \"API.example.com\" already belongs to provider \"one\"",
                "provider \"three\" has no hosts",
            ]
        );
        let syntax =
            Catalog::from_toml("[[provider]]\nname = \"a\"\nclass = \"bulk\"\n").unwrap_err();
        assert!(
            matches!(&syntax[..], [CatalogError::Syntax(m)] if m.contains("missing field `display`")),
            "{syntax:?}"
        );
        let unknown = Catalog::from_toml("[[provider]]\nname = \"a\"\ndisplay = \"A\"\nclass = \"bulk\"\nhosts = [\"a.example\"]\nsource = \"https://e.example\"\nregion = \"x\"\n").unwrap_err();
        assert!(
            matches!(&unknown[..], [CatalogError::Syntax(m)] if m.contains("unknown field `region`")),
            "{unknown:?}"
        );
    }

    #[test]
    fn thousands_of_patterns_under_one_suffix() {
        // Siblings share the trie node of their common suffix; each lookup still
        // finds its own.
        let mut entries = Vec::new();
        let hosts: Vec<Vec<String>> = (0..2000)
            .map(|i| vec![format!("api{i}.example.com"), format!("*.r{i}.example.com")])
            .collect();
        let names: Vec<String> = (0..2000).map(|i| format!("p{i}")).collect();
        let host_refs: Vec<Vec<&str>> = hosts
            .iter()
            .map(|h| h.iter().map(String::as_str).collect())
            .collect();
        for (name, hosts) in names.iter().zip(&host_refs) {
            entries.push((name.as_str(), "interactive", hosts.as_slice()));
        }
        let c = small(&entries);
        expect_lookup(&c, "api1999.example.com", Some("p1999"));
        expect_lookup(&c, "x.y.r7.example.com", Some("p7"));
        expect_lookup(&c, "api2000.example.com", None);
        assert_eq!(c.providers().len(), 2000);
    }
}
