//! Semantic checks: what the types alone cannot say (names that must exist, lists that
//! must not be empty, values that must agree with each other).
//!
//! Every check runs and every problem is kept, so one `inferlane check` shows all of
//! them. Problems are reported by key path; `locate` turns paths into positions.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use super::locate::{key_path, KeyPath};
use super::schema::{Action, Config, Export, Health, Rule};
use super::units::format_duration;
use crate::classify::catalog::{self, Catalog};

/// One semantic problem, located by key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub(crate) path: KeyPath,
    pub(crate) message: String,
    /// For duplicates: where the first occurrence is, so the message can say.
    pub(crate) first: Option<KeyPath>,
}

/// Linux's IFNAMSIZ is 16 including the terminating NUL.
const IFNAME_MAX: usize = 15;
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(10);
const MIN_ACTIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// The slowest export pace: 100 messages a second still carry ~3,000 flows.
const MIN_EXPORT_PACE: u32 = 100;
/// The shortest rate window for bulk demotion: a few round trips of a
/// streamed answer, so one burst cannot fill a window.
const MIN_DEMOTE_WINDOW: Duration = Duration::from_millis(100);
// The flow scanner works in whole seconds; a shorter idle timeout would end flows
// between two packets of an ordinary request.
const MIN_INACTIVE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) fn check(config: &Config) -> Vec<Issue> {
    let mut c = Checker::default();
    c.daemon(config);
    c.lan(config);
    c.uplinks(config);
    c.routing(config);
    c.classes(config);
    // Only names and patterns are read from the built-in catalog, which is parsed
    // once per process.
    let builtin = Catalog::builtin();
    c.providers(config, &builtin);
    for (i, rule) in config.rules.iter().enumerate() {
        c.rule(config, &builtin, key_path!["rules", i], rule);
    }
    if let Some(export) = &config.export {
        c.export(export);
    }
    c.issues
}

#[derive(Default)]
struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn error(&mut self, path: KeyPath, message: String) {
        self.issues.push(Issue {
            path,
            message,
            first: None,
        });
    }

    /// Reports every repeated entry of `items` (at its second occurrence) as
    /// "duplicate WHAT VALUE".
    fn duplicates<T: Hash + Eq + std::fmt::Display>(
        &mut self,
        list: &KeyPath,
        items: &[T],
        what: &str,
    ) {
        for (first, again) in duplicates(items) {
            self.issues.push(Issue {
                path: list.join(again),
                message: format!("duplicate {what} {:?}", items[again].to_string()),
                first: Some(list.join(first)),
            });
        }
    }

    fn daemon(&mut self, config: &Config) {
        let socket = &config.daemon.control_socket;
        if !socket.is_absolute() {
            self.error(
                key_path!["daemon", "control_socket"],
                format!("control_socket {socket:?} must be an absolute path"),
            );
        }
        let bpffs = &config.daemon.bpffs;
        if !bpffs.is_absolute() {
            self.error(key_path!["daemon", "bpffs"], format!("bpffs {bpffs:?} must be an absolute path"));
        }
        let size = config.daemon.flow_table_size;
        if !(super::schema::FLOW_TABLE_MIN..=super::schema::FLOW_TABLE_MAX).contains(&size) {
            self.error(
                key_path!["daemon", "flow_table_size"],
                format!(
                    "flow_table_size {size} is out of range {}..={}",
                    super::schema::FLOW_TABLE_MIN,
                    super::schema::FLOW_TABLE_MAX
                ),
            );
        }
    }

    fn routing(&mut self, config: &Config) {
        let routing = &config.routing;
        for (j, name) in routing.default_uplinks.iter().flatten().enumerate() {
            if config.uplink(name).is_none() {
                self.error(
                    key_path!["routing", "default_uplinks", j],
                    format!(
                        "default_uplinks names uplink {name:?}, which is not defined ({})",
                        defined("uplinks", config.uplinks.iter().map(|u| &u.name))
                    ),
                );
            }
        }
        if let Some(list) = &routing.default_uplinks {
            let list: Vec<_> = list.iter().map(String::as_str).collect();
            self.duplicates(&key_path!["routing", "default_uplinks"], &list, "uplink");
        }
        let span = crate::bpf::abi::MAX_UPLINKS as u32;
        // 253-255 are default/main/local; 0 is "unspecified".
        let base = routing.table_base;
        if base == 0 || base.checked_add(span).is_none() || (base..=base + span).any(|t| (253..=255).contains(&t)) {
            self.error(
                key_path!["routing", "table_base"],
                format!("table_base {base}: tables {base}..={} must avoid 0 and 253-255 (default, main, local)", base.saturating_add(span)),
            );
        }
        let span = span * crate::uplink::route::RULES_PER_UPLINK;
        let prio = routing.rule_priority;
        if prio == 0 || prio.checked_add(span).is_none_or(|last| last >= 32766) {
            self.error(
                key_path!["routing", "rule_priority"],
                format!("rule_priority {prio}: rules {prio}..={} must sit between 1 and 32765, before the main table's rule", prio.saturating_add(span)),
            );
        }
    }

    fn lan(&mut self, config: &Config) {
        let interfaces = &config.lan.interfaces;
        if interfaces.is_empty() {
            self.error(
                key_path!["lan", "interfaces"],
                "lan.interfaces is empty; list at least one LAN interface, e.g. interfaces = [\"lan0\"]".into(),
            );
        }
        for (i, name) in interfaces.iter().enumerate() {
            self.interface_name(key_path!["lan", "interfaces", i], name);
        }
        self.duplicates(&key_path!["lan", "interfaces"], interfaces, "LAN interface");
    }

    fn interface_name(&mut self, path: KeyPath, name: &str) {
        if let Some(problem) = interface_name_problem(name) {
            self.error(path, format!("invalid interface name {name:?}: {problem}"));
        }
    }

    fn uplinks(&mut self, config: &Config) {
        let mut by_interface: HashMap<&str, usize> = HashMap::new();
        for (i, uplink) in config.uplinks.iter().enumerate() {
            let here = key_path!["uplinks", i];
            if let Some(problem) = name_problem(&uplink.name) {
                self.error(
                    here.join("name"),
                    format!("invalid uplink name {:?}: {problem}", uplink.name),
                );
            }
            let interface = uplink.interface.as_str();
            if interface_name_problem(interface).is_some() {
                self.interface_name(here.join("interface"), interface);
            } else if config.lan.interfaces.iter().any(|lan| lan == interface) {
                self.error(
                    here.join("interface"),
                    format!(
                        "uplink {:?} uses interface {interface:?}, which is also a LAN interface",
                        uplink.name
                    ),
                );
            } else if let Some(&first) = by_interface.get(interface) {
                self.issues.push(Issue {
                    path: here.join("interface"),
                    message: format!(
                        "interface {interface:?} is already used by uplink {:?}",
                        config.uplinks[first].name
                    ),
                    first: Some(key_path!["uplinks", first, "interface"]),
                });
            } else {
                by_interface.insert(interface, i);
            }
            if let Some(health) = &uplink.health {
                self.health(here.join("health"), health);
            }
            if !(1..=super::schema::WEIGHT_MAX).contains(&uplink.weight) {
                self.error(
                    here.join("weight"),
                    format!("weight {} is out of range 1..={}", uplink.weight, super::schema::WEIGHT_MAX),
                );
            }
            let (mut v4, mut v6) = (0, 0);
            for (j, gw) in uplink.gateways.iter().enumerate() {
                let count = if gw.is_ipv4() { &mut v4 } else { &mut v6 };
                *count += 1;
                if gw.is_unspecified() || gw.is_multicast() || gw.is_loopback() {
                    self.error(here.join("gateways").join(j), format!("gateway {gw} is not a unicast next hop"));
                } else if *count > 1 {
                    self.error(
                        here.join("gateways").join(j),
                        format!("gateway {gw}: at most one gateway per address family"),
                    );
                }
            }
        }
        if config.uplinks.len() > crate::bpf::abi::MAX_UPLINKS {
            self.error(
                key_path!["uplinks", crate::bpf::abi::MAX_UPLINKS],
                format!(
                    "{} uplinks defined; the flow mark has room for {}",
                    config.uplinks.len(),
                    crate::bpf::abi::MAX_UPLINKS
                ),
            );
        }
        let names: Vec<_> = config.uplinks.iter().map(|u| u.name.as_str()).collect();
        for (first, again) in duplicates(&names) {
            self.issues.push(Issue {
                path: key_path!["uplinks", again, "name"],
                message: format!("duplicate uplink name {:?}", names[again]),
                first: Some(key_path!["uplinks", first, "name"]),
            });
        }
    }

    fn health(&mut self, here: KeyPath, health: &Health) {
        if health.probes.is_empty() {
            self.error(
                here.join("probes"),
                "health needs at least one probe, e.g. probes = [\"icmp:192.0.2.1\"]".into(),
            );
        }
        self.duplicates(&here.join("probes"), &health.probes, "probe");
        if health.interval < MIN_PROBE_INTERVAL {
            self.error(
                here.join("interval"),
                format!(
                    "health interval {} is below the minimum of {}",
                    format_duration(health.interval),
                    format_duration(MIN_PROBE_INTERVAL)
                ),
            );
        }
        if health.down_after == 0 {
            self.error(
                here.join("down_after"),
                "down_after must be at least 1".into(),
            );
        }
        if health.up_after == 0 {
            self.error(here.join("up_after"), "up_after must be at least 1".into());
        }
    }

    fn classes(&mut self, config: &Config) {
        for (i, class) in config.classes.iter().enumerate() {
            let here = key_path!["classes", i];
            if let Some(problem) = name_problem(&class.name) {
                self.error(
                    here.join("name"),
                    format!("invalid class name {:?}: {problem}", class.name),
                );
            }
            for (j, uplink) in class.uplinks.iter().enumerate() {
                if config.uplink(uplink).is_none() {
                    self.error(
                        here.join("uplinks").join(j),
                        format!(
                            "class {:?} names uplink {uplink:?}, which is not defined ({})",
                            class.name,
                            defined("uplinks", config.uplinks.iter().map(|u| &u.name))
                        ),
                    );
                }
            }
            let list: Vec<_> = class.uplinks.iter().map(String::as_str).collect();
            self.duplicates(&here.join("uplinks"), &list, "uplink");
            if let Some(demote) = &class.demote {
                let at = here.join("demote");
                if demote.after.is_none() && demote.rate.is_none() {
                    self.error(
                        at.clone(),
                        format!("class {:?}: demote needs a threshold: `after` (bytes), `rate` (with `for`), or both", class.name),
                    );
                }
                if demote.after.is_none() && !demote.min_age.is_zero() {
                    self.error(at.join("min_age"), "demote `min_age` applies to `after`, which is not set".to_string());
                }
                if demote.rate.is_some() && demote.window < MIN_DEMOTE_WINDOW {
                    self.error(
                        at.join("for"),
                        format!(
                            "demote `for` must be at least {}: a shorter window measures a burst, not a transfer",
                            format_duration(MIN_DEMOTE_WINDOW)
                        ),
                    );
                }
                let to = at.join("to");
                if demote.to == class.name {
                    self.error(to, format!("class {:?} cannot be demoted to itself; name a lower class", class.name));
                } else if config.class(&demote.to).is_none() {
                    self.error(
                        to,
                        format!(
                            "class {:?} demotes to class {:?}, which is not defined ({})",
                            class.name,
                            demote.to,
                            defined("classes", config.classes.iter().map(|c| &c.name))
                        ),
                    );
                }
            }
        }
        let names: Vec<_> = config.classes.iter().map(|c| c.name.as_str()).collect();
        for (first, again) in duplicates(&names) {
            self.issues.push(Issue {
                path: key_path!["classes", again, "name"],
                message: format!("duplicate class name {:?}", names[again]),
                first: Some(key_path!["classes", first, "name"]),
            });
        }
    }

    /// `[[providers]]`: new providers need hosts, built-in ones need something to
    /// change; every pattern is well formed and belongs to one provider only.
    fn providers(&mut self, config: &Config, builtin: &Catalog) {
        // Normalized pattern → where the configuration first lists it.
        let mut listed: HashMap<String, KeyPath> = HashMap::new();
        let mut added = 0usize;
        for (i, provider) in config.providers.iter().enumerate() {
            let here = key_path!["providers", i];
            let name = &provider.name;
            if let Some(problem) = name_problem(name) {
                self.error(
                    here.join("name"),
                    format!("invalid provider name {name:?}: {problem}"),
                );
            }
            let built_in = builtin.by_name(name).is_some();
            if !built_in {
                added += 1;
                if builtin.providers().len() + added > usize::from(u16::MAX) {
                    self.error(
                        here.join("name"),
                        format!(
                            "too many providers: ids are 16 bits, so at most {} can be added",
                            usize::from(u16::MAX) - builtin.providers().len()
                        ),
                    );
                }
            }
            if !built_in && provider.hosts.is_empty() {
                self.error(
                    here.join("hosts"),
                    format!(
                        "provider {name:?} is not in the built-in catalog, so it needs hosts, e.g. hosts = [\"llm.example.com\"]"
                    ),
                );
            }
            if built_in
                && provider.hosts.is_empty()
                && provider.class.is_none()
                && provider.display.is_none()
            {
                self.error(
                    here.clone(),
                    format!(
                        "provider {name:?} is built in and this entry changes nothing; give hosts to add, a class or a display name"
                    ),
                );
            }
            if let Some(class) = &provider.class {
                if !catalog::CLASSES.contains(&class.as_str()) {
                    self.error(
                        here.join("class"),
                        format!(
                            "unknown provider class {class:?}; use \"interactive\", \"chat\" or \"bulk\" (a rule puts a provider's flows in any class)"
                        ),
                    );
                }
            }
            if provider
                .display
                .as_deref()
                .is_some_and(|d| d.trim().is_empty())
            {
                self.error(here.join("display"), "display must not be empty".into());
            }
            for (j, host) in provider.hosts.iter().enumerate() {
                let path = here.join("hosts").join(j);
                let pattern = match catalog::normalize_pattern(host) {
                    Ok(pattern) => pattern,
                    Err(problem) => {
                        self.error(path, format!("invalid host pattern {host:?}: {problem}"));
                        continue;
                    }
                };
                if let Some(owner) = builtin.pattern_owner(&pattern) {
                    let message = if owner.name == *name {
                        format!(
                            "provider {name:?} already has host {host:?} in the built-in catalog"
                        )
                    } else {
                        format!(
                            "host {host:?} already belongs to built-in provider {:?}; a pattern belongs to one provider (a more specific pattern, such as an exact name, takes precedence over it)",
                            owner.name
                        )
                    };
                    self.error(path, message);
                } else if let Some(first) = listed.get(&pattern) {
                    self.issues.push(Issue {
                        path,
                        message: format!("duplicate host pattern {host:?}"),
                        first: Some(first.clone()),
                    });
                } else {
                    listed.insert(pattern, path);
                }
            }
        }
        let names: Vec<_> = config.providers.iter().map(|p| p.name.as_str()).collect();
        for (first, again) in duplicates(&names) {
            self.issues.push(Issue {
                path: key_path!["providers", again, "name"],
                message: format!(
                    "duplicate provider name {:?}; give all of its hosts in one entry",
                    names[again]
                ),
                first: Some(key_path!["providers", first, "name"]),
            });
        }
    }

    fn rule(&mut self, config: &Config, builtin: &Catalog, here: KeyPath, rule: &Rule) {
        if rule.providers.is_empty()
            && rule.destinations.is_empty()
            && rule.clients.is_empty()
            && rule.ports.is_empty()
        {
            self.error(
                here.clone(),
                "rule matches nothing; give at least one of providers, destinations, clients or ports".into(),
            );
        }
        match (rule.action, &rule.class) {
            (Action::Classify, None) => self.error(
                here.join("class"),
                "rule has no class; add class = \"NAME\" (action \"classify\" is the default) or set action = \"block\"".into(),
            ),
            (Action::Classify, Some(class)) if config.class(class).is_none() => self.error(
                here.join("class"),
                format!(
                    "rule names class {class:?}, which is not defined ({})",
                    defined("classes", config.classes.iter().map(|c| &c.name))
                ),
            ),
            (Action::Block, Some(class)) => self.error(
                here.join("class"),
                format!("a \"block\" rule takes no class; remove class = {class:?}"),
            ),
            _ => {}
        }
        // Names must be in the built-in catalog or added by [[providers]].
        let providers = here.join("providers");
        for (j, provider) in rule.providers.iter().enumerate() {
            if provider == "*" {
                if rule.providers.len() > 1 {
                    self.error(
                        providers.join(j),
                        "\"*\" already means every provider; list either \"*\" or provider names, not both".into(),
                    );
                }
            } else if let Some(problem) = name_problem(provider) {
                self.error(
                    providers.join(j),
                    format!("invalid provider name {provider:?}: {problem}, or \"*\" for all"),
                );
            } else if builtin.by_name(provider).is_none()
                && !config.providers.iter().any(|p| p.name == *provider)
            {
                self.error(
                    providers.join(j),
                    unknown_provider(provider, builtin, config),
                );
            }
        }
        self.duplicates(&providers, &rule.providers, "provider");
        self.duplicates(
            &here.join("destinations"),
            &rule.destinations,
            "destination",
        );
        self.duplicates(&here.join("clients"), &rule.clients, "client");
        self.duplicates(&here.join("ports"), &rule.ports, "port");
    }

    fn export(&mut self, export: &Export) {
        let here = key_path!["export"];
        if export.collectors.is_empty() {
            self.error(
                here.join("collectors"),
                "export needs at least one collector, e.g. collectors = [\"192.0.2.50:4739\"]"
                    .into(),
            );
        }
        let addresses: Vec<std::net::SocketAddr> = export.collectors.iter().map(|c| c.address).collect();
        self.duplicates(&here.join("collectors"), &addresses, "collector");
        if export.messages_per_second < MIN_EXPORT_PACE {
            self.error(
                here.join("messages_per_second"),
                format!(
                    "messages_per_second {} is below the minimum of {MIN_EXPORT_PACE}: records would wait in the backlog and be dropped",
                    export.messages_per_second
                ),
            );
        }
        let (active, inactive) = (export.active_timeout, export.inactive_timeout);
        if active < MIN_ACTIVE_TIMEOUT {
            self.error(
                here.join("active_timeout"),
                format!(
                    "active_timeout {} is below the minimum of {}",
                    format_duration(active),
                    format_duration(MIN_ACTIVE_TIMEOUT)
                ),
            );
        }
        if inactive < MIN_INACTIVE_TIMEOUT {
            self.error(
                here.join("inactive_timeout"),
                format!(
                    "inactive_timeout {} is below the minimum of {}",
                    format_duration(inactive),
                    format_duration(MIN_INACTIVE_TIMEOUT)
                ),
            );
        } else if inactive > active {
            self.error(
                here.join("inactive_timeout"),
                format!(
                    "inactive_timeout {} exceeds active_timeout {}",
                    format_duration(inactive),
                    format_duration(active)
                ),
            );
        }
    }
}

/// Why `name` cannot be a Linux interface name (the kernel's dev_valid_name), if it
/// cannot.
fn interface_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Some(format!(
            "{} bytes long, Linux allows at most {IFNAME_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some("\".\" and \"..\" are not allowed".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Some(format!("contains {bad:?}, which Linux does not allow"));
    }
    None
}

/// Names of uplinks, classes and providers: short tokens that are safe in metric
/// labels, log lines and status output without quoting.
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

/// "unknown provider \"openia\" (did you mean \"openai\"?); ..." for a rule naming a
/// provider that is neither built in nor configured.
fn unknown_provider(name: &str, builtin: &Catalog, config: &Config) -> String {
    let known = builtin
        .providers()
        .iter()
        .map(|p| p.name.as_str())
        .chain(config.providers.iter().map(|p| p.name.as_str()));
    let closest = known
        .map(|known| (edit_distance(name, known), known))
        .filter(|(distance, _)| *distance <= 2)
        .min();
    let hint = match closest {
        Some((_, known)) => format!(" (did you mean {known:?}?)"),
        None => String::new(),
    };
    format!(
        "unknown provider {name:?}{hint}; use a name from {} or add the provider with [[providers]]",
        catalog::BUILTIN_PATH
    )
}

/// Levenshtein distance, for "did you mean" hints on short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// "defined uplinks: \"fiber\", \"lte\"" or "no uplinks are defined".
fn defined<'a>(what: &str, names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<_> = names.map(|n| format!("{n:?}")).collect();
    if names.is_empty() {
        format!("no {what} are defined")
    } else {
        format!("defined {what}: {}", names.join(", "))
    }
}

/// (index of first occurrence, index of repeat) for every repeated element.
fn duplicates<T: Hash + Eq>(items: &[T]) -> Vec<(usize, usize)> {
    let mut seen: HashMap<&T, usize> = HashMap::new();
    let mut repeats = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match seen.get(item) {
            Some(&first) => repeats.push((first, i)),
            None => {
                seen.insert(item, i);
            }
        }
    }
    repeats
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    /// Every error as "LINE:COL: message".
    fn errors(text: &str) -> Vec<String> {
        match parse(text, "t.toml") {
            Ok(config) => panic!("expected errors, but the config loaded: {config:#?}"),
            Err(errors) => errors
                .0
                .iter()
                .map(|e| {
                    let (line, col) = e.position().expect("a position");
                    format!("{line}:{col}: {}", e.message())
                })
                .collect(),
        }
    }

    /// Exactly one error, at `line:col`, whose message contains `needle`.
    #[track_caller]
    fn expect_one(text: &str, line: usize, col: usize, needle: &str) {
        let seen = errors(text);
        let prefix = format!("{line}:{col}: ");
        assert!(
            seen.len() == 1 && seen[0].starts_with(&prefix) && seen[0].contains(needle),
            "expected one error at {line}:{col} containing {needle:?}\nsaw:\n{}",
            seen.join("\n")
        );
    }

    /// Exactly these errors, in this order (each as "LINE:COL: substring").
    #[track_caller]
    fn expect_all(text: &str, expected: &[(usize, usize, &str)]) {
        let seen = errors(text);
        let matches = seen.len() == expected.len()
            && seen
                .iter()
                .zip(expected)
                .all(|(seen, (line, col, needle))| {
                    seen.starts_with(&format!("{line}:{col}: ")) && seen.contains(needle)
                });
        assert!(
            matches,
            "expected:\n{}\nsaw:\n{}",
            expected
                .iter()
                .map(|(l, c, n)| format!("{l}:{c}: ...{n}..."))
                .collect::<Vec<_>>()
                .join("\n"),
            seen.join("\n")
        );
    }

    const LAN: &str = "[lan]\ninterfaces = [\"lan0\"]\n";

    #[test]
    fn lan_interfaces_must_be_listed() {
        expect_one("[lan]\ninterfaces = []\n", 2, 14, "lan.interfaces is empty");
        expect_one("", 1, 1, "lan.interfaces is empty");
        expect_one("[lan]\n", 1, 1, "lan.interfaces is empty");
    }

    #[test]
    fn lan_interface_names_must_be_valid_for_linux() {
        let text = "[lan]\ninterfaces = [\"lan0\", \"a/b\", \"thisnameistoolong\", \"..\", \"lan 1\", \"eth0:1\", \"\"]\n";
        expect_all(
            text,
            &[
                (2, 23, "invalid interface name \"a/b\": contains '/'"),
                (2, 30, "invalid interface name \"thisnameistoolong\": 17 bytes long, Linux allows at most 15"),
                (2, 51, "invalid interface name \"..\""),
                (2, 57, "invalid interface name \"lan 1\": contains ' '"),
                (2, 66, "invalid interface name \"eth0:1\": contains ':'"),
                (2, 76, "invalid interface name \"\": empty"),
            ],
        );
    }

    #[test]
    fn duplicate_lan_interface_points_at_the_second() {
        expect_one(
            "[lan]\ninterfaces = [\"lan0\", \"lan1\", \"lan0\"]\n",
            2,
            31,
            "duplicate LAN interface \"lan0\" (first at line 2)",
        );
    }

    #[test]
    fn uplink_interfaces_are_not_lan_and_not_shared() {
        let text = format!(
            "{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"lan0\"\n\n[[uplinks]]\nname = \"a\"\ninterface = \"wan0\"\n\n[[uplinks]]\nname = \"b\"\ninterface = \"wan0\"\n"
        );
        expect_all(
            &text,
            &[
                (
                    5,
                    13,
                    "uplink \"fiber\" uses interface \"lan0\", which is also a LAN interface",
                ),
                (
                    13,
                    13,
                    "interface \"wan0\" is already used by uplink \"a\" (first at line 9)",
                ),
            ],
        );
        let text = format!("{LAN}[[uplinks]]\nname = \"a\"\ninterface = \"wan/0\"\n");
        expect_one(&text, 5, 13, "invalid interface name \"wan/0\"");
    }

    #[test]
    fn uplink_names_are_unique_and_well_formed() {
        let text = format!(
            "{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\n[[uplinks]]\nname = \"Fiber 2\"\ninterface = \"wan1\"\n[[uplinks]]\nname = \"fiber\"\ninterface = \"wan2\"\n[[uplinks]]\nname = \"\"\ninterface = \"wan3\"\n"
        );
        expect_all(
            &text,
            &[
                (7, 8, "invalid uplink name \"Fiber 2\": use only lowercase letters, digits, '_' and '-'"),
                (10, 8, "duplicate uplink name \"fiber\" (first at line 4)"),
                (13, 8, "invalid uplink name \"\": empty"),
            ],
        );
    }

    const UPLINKS: &str = "[lan]\ninterfaces = [\"lan0\"]\n[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\n[[uplinks]]\nname = \"lte\"\ninterface = \"wwan0\"\n";

    #[test]
    fn class_uplinks_must_exist_once() {
        // Line 9 onwards.
        let text = format!("{UPLINKS}[[classes]]\nname = \"chat\"\ndscp = \"EF\"\nuplinks = [\"fiber\", \"lte2\", \"fiber\"]\n");
        expect_all(
            &text,
            &[
                (12, 21, "class \"chat\" names uplink \"lte2\", which is not defined (defined uplinks: \"fiber\", \"lte\")"),
                (12, 29, "duplicate uplink \"fiber\" (first at line 12)"),
            ],
        );
        let text =
            format!("{LAN}[[classes]]\nname = \"chat\"\ndscp = \"EF\"\nuplinks = [\"fiber\"]\n");
        expect_one(
            &text,
            6,
            12,
            "uplink \"fiber\", which is not defined (no uplinks are defined)",
        );
    }

    #[test]
    fn class_names_are_unique_and_well_formed() {
        let text = format!(
            "{LAN}[[classes]]\nname = \"chat\"\ndscp = \"EF\"\n[[classes]]\nname = \"chat\"\ndscp = \"LE\"\n[[classes]]\nname = \"Bulk!\"\ndscp = 0\n"
        );
        expect_all(
            &text,
            &[
                (7, 8, "duplicate class name \"chat\" (first at line 4)"),
                (10, 8, "invalid class name \"Bulk!\""),
            ],
        );
    }

    #[test]
    fn demotion_targets_another_defined_class() {
        let text = format!(
            "{LAN}[[classes]]\nname = \"chat\"\ndscp = \"EF\"\ndemote = {{ after = \"20MB\", to = \"chat\" }}\n[[classes]]\nname = \"api\"\ndscp = \"EF\"\ndemote = {{ after = \"1MB\", to = \"bulk\" }}\n"
        );
        expect_all(
            &text,
            &[
                (6, 33, "class \"chat\" cannot be demoted to itself"),
                (10, 32, "class \"api\" demotes to class \"bulk\", which is not defined"),
            ],
        );
        let ok = format!(
            "{LAN}[[classes]]\nname = \"chat\"\ndscp = \"EF\"\ndemote = {{ after = \"20MB\", min_age = \"2s\", to = \"bulk\" }}\n[[classes]]\nname = \"bulk\"\ndscp = \"LE\"\nqueue = \"low\"\n"
        );
        let config = crate::config::parse(&ok, "test.toml").unwrap_or_else(|e| panic!("expected a valid demotion: {e}"));
        let d = config.classes[0].demote.as_ref().expect("demote parsed");
        assert_eq!(
            (d.after.map(|a| a.bytes()), d.min_age, d.rate, d.to.as_str()),
            (Some(20_000_000), std::time::Duration::from_secs(2), None, "bulk")
        );
    }

    #[test]
    fn demotion_needs_a_threshold_and_a_sane_rate_window() {
        let bulk = "[[classes]]\nname = \"bulk\"\ndscp = \"LE\"\n";
        let text = format!(
            "{LAN}[[classes]]\nname = \"a\"\ndscp = \"EF\"\ndemote = {{ to = \"bulk\" }}\n[[classes]]\nname = \"b\"\ndscp = \"EF\"\ndemote = {{ min_age = \"1s\", rate = \"5mbit\", for = \"10ms\", to = \"bulk\" }}\n{bulk}"
        );
        expect_all(
            &text,
            &[
                (6, 10, "class \"a\": demote needs a threshold"),
                (10, 22, "demote `min_age` applies to `after`, which is not set"),
                (10, 50, "demote `for` must be at least 100ms"),
            ],
        );
        let ok = format!("{LAN}[[classes]]\nname = \"a\"\ndscp = \"EF\"\ndemote = {{ rate = \"5mbit\", to = \"bulk\" }}\n{bulk}");
        let config = crate::config::parse(&ok, "test.toml").unwrap_or_else(|e| panic!("expected a valid rate demotion: {e}"));
        let d = config.classes[0].demote.as_ref().expect("demote parsed");
        assert_eq!(d.after, None);
        assert_eq!(d.rate.map(|r| r.bytes_per_sec()), Some(625_000));
        assert_eq!(d.window, std::time::Duration::from_secs(5), "`for` defaults to 5 s");
    }

    const CLASSES: &str =
        "[lan]\ninterfaces = [\"lan0\"]\n[[classes]]\nname = \"chat\"\ndscp = \"EF\"\n";

    #[test]
    fn classify_rule_needs_an_existing_class() {
        // A missing class points at the rule's table.
        let text = format!("{CLASSES}\n[[rules]]\nproviders = [\"openai\"]\n");
        expect_one(&text, 7, 1, "rule has no class");
        let text = format!("{CLASSES}[[rules]]\nclass = \"bulk\"\nproviders = [\"openai\"]\n");
        expect_one(
            &text,
            7,
            9,
            "rule names class \"bulk\", which is not defined (defined classes: \"chat\")",
        );
        // Inline array of tables works the same way.
        // (Written before the first table header, or it would belong to that table.)
        let text = format!("rules = [{{ class = \"chat\", ports = [\"tcp:443\"] }}, {{ class = \"nope\", ports = [\"tcp:443\"] }}]\n{CLASSES}");
        expect_one(&text, 1, 61, "rule names class \"nope\"");
    }

    #[test]
    fn block_rule_takes_no_class() {
        let text = format!("{CLASSES}[[rules]]\naction = \"block\"\nclass = \"chat\"\nclients = [\"198.51.100.0/25\"]\n");
        expect_one(
            &text,
            8,
            9,
            "a \"block\" rule takes no class; remove class = \"chat\"",
        );
        let text =
            format!("{CLASSES}[[rules]]\naction = \"block\"\nclients = [\"198.51.100.0/25\"]\n");
        assert!(
            parse(&text, "t.toml").is_ok(),
            "a block rule without class is fine"
        );
    }

    #[test]
    fn rule_needs_a_matcher() {
        let text = format!("{CLASSES}[[rules]]\nclass = \"chat\"\nproviders = []\n");
        expect_one(
            &text,
            6,
            1,
            "rule matches nothing; give at least one of providers, destinations, clients or ports",
        );
    }

    #[test]
    fn provider_names() {
        let text = format!("{CLASSES}[[rules]]\nclass = \"chat\"\nproviders = [\"openai\", \"Open AI\", \"*\", \"openai\"]\n");
        expect_all(
            &text,
            &[
                (8, 24, "invalid provider name \"Open AI\""),
                (8, 35, "\"*\" already means every provider"),
                (8, 40, "duplicate provider \"openai\" (first at line 8)"),
            ],
        );
        let text = format!("{CLASSES}[[rules]]\nclass = \"chat\"\nproviders = [\"*\"]\n");
        assert!(parse(&text, "t.toml").is_ok(), "\"*\" alone is fine");
    }

    #[test]
    fn rule_providers_must_be_known() {
        let text = format!("{CLASSES}[[rules]]\nclass = \"chat\"\nproviders = [\"openia\", \"acme\", \"claude\"]\n");
        expect_all(
            &text,
            &[
                (8, 14, "unknown provider \"openia\" (did you mean \"openai\"?); use a name from catalog/providers.toml or add the provider with [[providers]]"),
                (8, 24, "unknown provider \"acme\"; use a name"),
            ],
        );
        // Added by [[providers]], named before or after the rule.
        let text = format!("{CLASSES}[[rules]]\nclass = \"chat\"\nproviders = [\"acme\", \"openai\"]\n[[providers]]\nname = \"acme\"\nhosts = [\"llm.acme.example\"]\n");
        assert!(
            parse(&text, "t.toml").is_ok(),
            "a configured provider is known"
        );
    }

    #[test]
    fn routing_and_uplink_steering_options() {
        let text = format!(
            "{UPLINKS}weight = 0\ngateways = [\"203.0.113.1\", \"203.0.113.9\", \"::\"]\n[routing]\ndefault_uplinks = [\"lte\", \"wifi\"]\ntable_base = 250\nrule_priority = 32760\n"
        );
        expect_all(
            &text,
            &[
                (9, 10, "weight 0 is out of range 1..=100"),
                (10, 28, "gateway 203.0.113.9: at most one gateway per address family"),
                (10, 43, "gateway :: is not a unicast next hop"),
                (12, 27, "default_uplinks names uplink \"wifi\", which is not defined (defined uplinks: \"fiber\", \"lte\")"),
                (13, 14, "table_base 250: tables 250..=265 must avoid 0 and 253-255"),
                (14, 17, "rule_priority 32760: rules 32760..=32790 must sit between 1 and 32765"),
            ],
        );
        let good = format!("{UPLINKS}weight = 3\ngateways = [\"203.0.113.1\", \"2001:db8:2::1\"]\n[routing]\ndefault_uplinks = [\"fiber\"]\n");
        let config = parse(&good, "t.toml").expect("valid routing options");
        assert_eq!(config.uplinks[1].weight, 3);
        assert_eq!(config.routing.default_uplinks, Some(vec!["fiber".to_string()]));
        assert_eq!(config.routing.table_base, crate::config::schema::ROUTING_TABLE_BASE);
    }

    #[test]
    fn provider_tables() {
        let text = format!(
            "{CLASSES}[[providers]]\nname = \"acme\"\n[[providers]]\nname = \"openai\"\n[[providers]]\nname = \"Acme!\"\nhosts = [\"ok.example\", \"bad..example\", \"*.com\", \"api.openai.com\", \"*.openai.azure.com\"]\nclass = \"fast\"\n[[providers]]\nname = \"acme\"\nhosts = [\"OK.example.\"]\ndisplay = \"\"\n"
        );
        expect_all(
            &text,
            &[
                (6, 1, "provider \"acme\" is not in the built-in catalog, so it needs hosts"),
                (8, 1, "provider \"openai\" is built in and this entry changes nothing"),
                (11, 8, "invalid provider name \"Acme!\""),
                (12, 24, "invalid host pattern \"bad..example\": empty label"),
                (12, 40, "invalid host pattern \"*.com\": a wildcard needs at least two labels after it"),
                (12, 49, "host \"api.openai.com\" already belongs to built-in provider \"openai\""),
                (12, 67, "host \"*.openai.azure.com\" already belongs to built-in provider \"azure-openai\""),
                (13, 9, "unknown provider class \"fast\"; use \"interactive\", \"chat\" or \"bulk\""),
                (15, 8, "duplicate provider name \"acme\"; give all of its hosts in one entry (first at line 7)"),
                (16, 10, "duplicate host pattern \"OK.example.\" (first at line 12)"),
                (17, 11, "display must not be empty"),
            ],
        );
        let text =
            format!("{CLASSES}[[providers]]\nname = \"openai\"\nhosts = [\"API.openai.com\"]\n");
        expect_one(
            &text,
            8,
            10,
            "provider \"openai\" already has host \"API.openai.com\" in the built-in catalog",
        );
        // Overrides and additions that are fine, including an exact name under a
        // built-in suffix (it is more specific, so it wins).
        let text = format!("{CLASSES}[[providers]]\nname = \"openai\"\nclass = \"bulk\"\n[[providers]]\nname = \"acme\"\nhosts = [\"special.openai.azure.com\", \"llm.*.acme.example\"]\n[[providers]]\nname = \"claude\"\ndisplay = \"Claude (staff)\"\n");
        if let Err(e) = parse(&text, "t.toml") {
            panic!("expected the config to load, got:\n{e}");
        }
    }

    #[test]
    fn duplicate_matchers() {
        let text = format!(
            "{CLASSES}[[rules]]\nclass = \"chat\"\ndestinations = [\"192.0.2.0/24\", \"192.0.2.0/24\"]\nports = [\"tcp:443\", \"TCP:443\"]\n"
        );
        expect_all(
            &text,
            &[
                (
                    8,
                    33,
                    "duplicate destination \"192.0.2.0/24\" (first at line 8)",
                ),
                (9, 21, "duplicate port \"tcp:443\" (first at line 9)"),
            ],
        );
    }

    #[test]
    fn health_limits() {
        let text = format!("{LAN}[[uplinks]]\nname = \"a\"\ninterface = \"wan0\"\nhealth = {{ interval = \"5ms\", down_after = 0, up_after = 0 }}\n");
        expect_all(
            &text,
            &[
                // No probes: the inline table itself.
                (6, 10, "health needs at least one probe"),
                (6, 23, "health interval 5ms is below the minimum of 10ms"),
                (6, 43, "down_after must be at least 1"),
                (6, 57, "up_after must be at least 1"),
            ],
        );
        let text = format!("{LAN}[[uplinks]]\nname = \"a\"\ninterface = \"wan0\"\n[uplinks.health]\nprobes = [\"icmp:192.0.2.1\", \"icmp:192.0.2.1\"]\ninterval = \"10ms\"\n");
        expect_one(
            &text,
            7,
            29,
            "duplicate probe \"icmp:192.0.2.1\" (first at line 7)",
        );
    }

    #[test]
    fn export_limits() {
        let text = format!("{LAN}[export]\n");
        expect_one(&text, 3, 1, "export needs at least one collector");
        let text = format!("{LAN}[export]\ncollectors = [\"192.0.2.50:4739\"]\nactive_timeout = \"500ms\"\ninactive_timeout = \"0s\"\nmessages_per_second = 10\n");
        expect_all(
            &text,
            &[
                (5, 18, "active_timeout 500ms is below the minimum of 1s"),
                (6, 20, "inactive_timeout 0s is below the minimum of 1s"),
                (7, 23, "messages_per_second 10 is below the minimum of 100"),
            ],
        );
        let text = format!(
            "{LAN}[export]\ncollectors = [\"192.0.2.50:4739\"]\ninactive_timeout = \"2m\"\n"
        );
        expect_one(
            &text,
            5,
            20,
            "inactive_timeout 2m exceeds active_timeout 1m",
        );
    }

    #[test]
    fn collectors_take_their_own_format_or_the_table_s() {
        let text = format!(
            "{LAN}[export]\nformat = \"netflow5\"\ncollectors = [\"127.0.0.1:4739\", {{ address = \"[::1]:2055\", format = \"netflow9\" }}, {{ address = \"127.0.0.1:9995\" }}]\n"
        );
        let config = parse(&text, "t.toml").unwrap_or_else(|e| panic!("expected the config to load, got:\n{e}"));
        let got: Vec<(std::net::SocketAddr, crate::config::ExportFormat)> =
            config.export.as_ref().unwrap().collectors().collect();
        use crate::config::ExportFormat::*;
        assert_eq!(
            got,
            [
                ("127.0.0.1:4739".parse().unwrap(), Netflow5),
                ("[::1]:2055".parse().unwrap(), Netflow9),
                ("127.0.0.1:9995".parse().unwrap(), Netflow5)
            ]
        );
    }

    #[test]
    fn collector_errors_point_at_the_value() {
        // Line 4 is the collectors line; columns are 1-based.
        let text = format!("{LAN}[export]\ncollectors = [\"127.0.0.1\"]\n");
        expect_one(&text, 4, 15, "missing port");
        let text = format!("{LAN}[export]\ncollectors = [{{ address = \"127.0.0.1:2055\", format = \"netflow8\" }}]\n");
        expect_one(&text, 4, 54, "unknown variant \"netflow8\"");
        let text = format!("{LAN}[export]\ncollectors = [{{ addr = \"127.0.0.1:2055\" }}]\n");
        expect_one(&text, 4, 17, "unknown field \"addr\", expected \"address\" or \"format\"");
        let text = format!("{LAN}[export]\ncollectors = [\"127.0.0.1:2055\", {{ address = \"127.0.0.1:2055\", format = \"netflow9\" }}]\n");
        expect_one(&text, 4, 33, "duplicate collector \"127.0.0.1:2055\" (first at line 4)");
        let text = format!("{LAN}[export]\ncollectors = [4739]\n");
        expect_one(&text, 4, 15, "expected an address like");
    }

    #[test]
    fn flow_table_size_is_bounded() {
        let text = format!("[daemon]\nflow_table_size = 100\n{LAN}");
        let errors = crate::config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(
            errors.to_string(),
            "t.toml:2:19: flow_table_size 100 is out of range 1024..=16777216"
        );
    }

    #[test]
    fn control_socket_is_absolute() {
        let text = format!("[daemon]\ncontrol_socket = \"control.sock\"\n{LAN}");
        expect_one(
            &text,
            2,
            18,
            "control_socket \"control.sock\" must be an absolute path",
        );
    }

    #[test]
    fn all_problems_are_reported_in_file_order() {
        let text = "[[rules]]\nclass = \"x\"\n\n[lan]\ninterfaces = [\"lan0\", \"lan0\"]\n";
        expect_all(
            text,
            &[
                (1, 1, "rule matches nothing"),
                (2, 9, "rule names class \"x\""),
                (5, 23, "duplicate LAN interface \"lan0\""),
            ],
        );
    }
}
