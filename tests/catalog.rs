//! The provider catalog as the daemon uses it: the built-in file is complete and
//! consistent, every listed host finds its own provider and near misses find none,
//! and the configuration's `[[providers]]` add and override, with mistakes reported
//! at their exact `LINE:COL`.

use std::collections::HashSet;
use std::path::Path;

use inferlane::classify::catalog::{self, Catalog, CatalogError, Provider};
use inferlane::config::{self, Config, ProviderConfig};

#[track_caller]
fn expect_lookup(catalog: &Catalog, host: &str, expected: Option<&str>) {
    let seen = catalog.lookup(host).map(|p| p.name.as_str());
    assert_eq!(
        seen, expected,
        "lookup({host:?}): expected {expected:?}, saw {seen:?}"
    );
}

/// All errors for `text`, as "LINE:COL: message". Panics if the text loads.
fn config_errors(text: &str) -> Vec<String> {
    match config::parse(text, "test.toml") {
        Ok(config) => panic!("expected errors, but the config loaded:\n{config:#?}"),
        Err(errors) => errors
            .0
            .iter()
            .map(|e| {
                let (line, col) = e
                    .position()
                    .unwrap_or_else(|| panic!("expected a position in {e}"));
                format!("{line}:{col}: {}", e.message())
            })
            .collect(),
    }
}

#[track_caller]
fn load(text: &str) -> Config {
    config::parse(text, "test.toml")
        .unwrap_or_else(|e| panic!("expected the config to load, got:\n{e}\n--- text ---\n{text}"))
}

const HEAD: &str = "[lan]\ninterfaces = [\"lan0\"]\n[[classes]]\nname = \"fast\"\ndscp = \"EF\"\n";

#[test]
fn builtin_catalog_is_complete_and_consistent() {
    let catalog = Catalog::builtin();
    let providers = catalog.providers();
    assert!(
        providers.len() >= 25,
        "expected at least 25 providers, saw {}",
        providers.len()
    );
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    for provider in providers {
        assert!(
            names.insert(provider.name.as_str()),
            "duplicate name {}",
            provider.name
        );
        assert!(ids.insert(provider.id), "duplicate id {}", provider.id);
        assert!(
            (1..=providers.len() as u16).contains(&provider.id),
            "{}: id {} outside 1..={}",
            provider.name,
            provider.id,
            providers.len()
        );
        assert!(
            catalog::CLASSES.contains(&provider.class.as_str()),
            "{}: class {:?} is not one of {:?}",
            provider.name,
            provider.class,
            catalog::CLASSES
        );
        let url = provider.source.strip_prefix("https://").unwrap_or("");
        assert!(
            url.contains('.') && !url.starts_with('/'),
            "{}: source {:?} is not an https URL",
            provider.name,
            provider.source
        );
        assert!(
            !provider.display.is_empty(),
            "{}: no display name",
            provider.name
        );
        assert!(
            provider.self_hosted || !provider.hosts.is_empty(),
            "{}: no hosts",
            provider.name
        );
    }
}

#[test]
fn the_issue_list_is_covered_with_the_right_classes() {
    let catalog = Catalog::builtin();
    let expected = [
        ("openai", "interactive"),
        ("azure-openai", "interactive"),
        ("anthropic", "interactive"),
        ("google-gemini", "interactive"),
        ("google-vertex-ai", "interactive"),
        ("aws-bedrock", "interactive"),
        ("mistral", "interactive"),
        ("cohere", "interactive"),
        ("groq", "interactive"),
        ("together", "interactive"),
        ("fireworks", "interactive"),
        ("deepseek", "interactive"),
        ("openrouter", "interactive"),
        ("perplexity", "interactive"),
        ("xai", "interactive"),
        ("replicate", "interactive"),
        ("huggingface-inference", "interactive"),
        ("cerebras", "interactive"),
        ("chatgpt", "chat"),
        ("claude", "chat"),
        ("gemini-app", "chat"),
        ("huggingface-cdn", "bulk"),
        ("ollama-registry", "bulk"),
    ];
    for (name, class) in expected {
        let provider = catalog
            .by_name(name)
            .unwrap_or_else(|| panic!("expected provider {name:?} in the catalog"));
        assert_eq!(provider.class, class, "class of {name}");
    }
}

/// A concrete host name for a pattern: the wildcard filled in.
fn example_of(pattern: &str) -> String {
    match pattern.strip_prefix("*.") {
        Some(rest) => format!("x-1.{rest}"),
        None => pattern.replace('*', "eu-west-3"),
    }
}

#[test]
fn every_builtin_host_finds_its_provider_and_near_misses_do_not() {
    let catalog = Catalog::builtin();
    for provider in catalog.providers() {
        for pattern in &provider.hosts {
            let host = example_of(pattern);
            expect_lookup(&catalog, &host, Some(&provider.name));
            expect_lookup(&catalog, &host.to_ascii_uppercase(), Some(&provider.name));
            expect_lookup(&catalog, &format!("{host}."), Some(&provider.name));
            let id = catalog.lookup(&host).map(|p| p.id);
            assert_eq!(
                id.and_then(|id| catalog.by_id(id)).map(|p| &p.name),
                Some(&provider.name),
                "{host}: the id maps back"
            );

            // The name as a label of someone else's domain.
            expect_lookup(&catalog, &format!("{host}.evil.example"), None);
            if let Some(apex) = pattern.strip_prefix("*.") {
                // Not the apex itself, unless the provider lists it as well.
                if !provider.hosts.iter().any(|h| h == apex) {
                    let seen = catalog.lookup(apex).map(|p| &p.name);
                    assert_ne!(
                        seen,
                        Some(&provider.name),
                        "{apex} is the apex of {pattern}, not below it"
                    );
                }
                expect_lookup(&catalog, &format!("x{apex}"), None);
            } else if pattern.contains('*') {
                // Two labels where the wildcard takes one, and none at all.
                let two = pattern.replace('*', "us-east-1.extra");
                let none = pattern.replace("*.", "");
                expect_lookup(&catalog, &two, None);
                expect_lookup(&catalog, &none, None);
            } else {
                // Look-alikes: one more character in the first label.
                let (first, rest) = host.split_once('.').unwrap_or((&host, ""));
                let lookalike = format!("not{first}.{rest}");
                let seen = catalog.lookup(lookalike.trim_end_matches('.'));
                let covered = provider.hosts.iter().any(|h| {
                    h.strip_prefix("*.")
                        .is_some_and(|s| lookalike.ends_with(&format!(".{s}")))
                });
                if !covered {
                    assert!(
                        seen.is_none_or(|p| p.name != provider.name),
                        "{lookalike} is not {host}, yet it found {}",
                        provider.name
                    );
                }
            }
        }
    }
}

#[test]
fn well_known_names() {
    let catalog = Catalog::builtin();
    let table = [
        ("api.openai.com", Some("openai")),
        ("API.OpenAI.com.", Some("openai")),
        ("openai.com", None),
        ("notopenai.com", None),
        ("api.openai.com.evil.example", None),
        ("myres.openai.azure.com", Some("azure-openai")),
        ("a.b.openai.azure.com", Some("azure-openai")),
        ("openai.azure.com", None),
        (
            "bedrock-runtime.us-east-1.amazonaws.com",
            Some("aws-bedrock"),
        ),
        ("bedrock-runtime.a.b.amazonaws.com", None),
        ("bedrock-runtime.amazonaws.com", None),
        ("s3.us-east-1.amazonaws.com", None),
        (
            "runtime.sagemaker.eu-west-1.amazonaws.com",
            Some("aws-sagemaker"),
        ),
        ("generativelanguage.googleapis.com", Some("google-gemini")),
        (
            "us-central1-aiplatform.googleapis.com",
            Some("google-vertex-ai"),
        ),
        ("www.googleapis.com", None),
        ("chatgpt.com", Some("chatgpt")),
        ("chat.openai.com", Some("chatgpt")),
        ("claude.ai", Some("claude")),
        ("gemini.google.com", Some("gemini-app")),
        ("google.com", None),
        ("huggingface.co", Some("huggingface-hub")),
        ("router.huggingface.co", Some("huggingface-inference")),
        ("cdn-lfs.huggingface.co", Some("huggingface-cdn")),
        ("cdn-lfs-us-1.hf.co", Some("huggingface-cdn")),
        ("cas-bridge.xethub.hf.co", Some("huggingface-cdn")),
        ("transfer.xethub-eu.hf.co", Some("huggingface-cdn")),
        ("us.aws.cdn.hf.co", Some("huggingface-cdn")),
        ("registry.ollama.ai", Some("ollama-registry")),
        ("ollama.ai", None),
        ("other.r2.cloudflarestorage.com", None),
        ("api.individual.githubcopilot.com", Some("github-copilot")),
        ("github.com", None),
    ];
    for (host, expected) in table {
        expect_lookup(&catalog, host, expected);
    }
}

const WITH_PROVIDERS: &str = r#"[lan]
interfaces = ["lan0"]

[[classes]]
name = "fast"
dscp = "EF"

[[providers]]
name = "acme-llm"
hosts = ["llm.acme.example", "*.inference.acme.example", "special.openai.azure.com"]

[[providers]]
name = "huggingface-hub"
class = "bulk"
display = "HF website"

[[providers]]
name = "google-vertex-ai"
hosts = ["africa-south1-aiplatform.googleapis.com"]

[[providers]]
name = "lab-ollama"
class = "bulk"
hosts = ["ollama.*.lab.example"]

[[rules]]
class = "fast"
providers = ["acme-llm", "openai"]
"#;

#[test]
fn config_adds_providers_and_overrides_classes() {
    let builtin = Catalog::builtin();
    let n = builtin.providers().len() as u16;
    let config = load(WITH_PROVIDERS);
    let catalog = Catalog::from_config(&config)
        .unwrap_or_else(|e| panic!("a validated config must build its catalog, got {e:?}"));
    assert_eq!(catalog.providers().len(), usize::from(n) + 2);

    // Built-in ids do not move; added providers follow, in config order.
    for provider in builtin.providers() {
        assert_eq!(
            catalog.by_name(&provider.name).map(|p| p.id),
            Some(provider.id)
        );
    }
    let acme = catalog.by_name("acme-llm").expect("acme-llm was added");
    assert_eq!(
        acme,
        &Provider {
            id: n + 1,
            name: "acme-llm".into(),
            display: "acme-llm".into(),
            class: catalog::DEFAULT_CLASS.into(),
            hosts: vec![
                "llm.acme.example".into(),
                "*.inference.acme.example".into(),
                "special.openai.azure.com".into()
            ],
            source: catalog::CONFIG_SOURCE.into(),
            self_hosted: false,
        }
    );
    assert_eq!(
        catalog.by_id(n + 2).map(|p| p.name.as_str()),
        Some("lab-ollama")
    );
    assert_eq!(catalog.by_id(n + 3), None);

    expect_lookup(&catalog, "llm.acme.example", Some("acme-llm"));
    expect_lookup(&catalog, "eu.gpu.inference.acme.example", Some("acme-llm"));
    expect_lookup(&catalog, "inference.acme.example", None);
    // An exact name under a built-in suffix takes that one name only.
    expect_lookup(&catalog, "special.openai.azure.com", Some("acme-llm"));
    expect_lookup(&catalog, "other.openai.azure.com", Some("azure-openai"));
    expect_lookup(&catalog, "ollama.rack1.lab.example", Some("lab-ollama"));
    expect_lookup(&catalog, "ollama.rack1.row2.lab.example", None);

    // A class override keeps the hosts; added hosts join the built-in ones.
    let hub = catalog.by_name("huggingface-hub").unwrap();
    assert_eq!(
        (hub.class.as_str(), hub.display.as_str()),
        ("bulk", "HF website")
    );
    assert_eq!(hub.hosts, builtin.by_name("huggingface-hub").unwrap().hosts);
    expect_lookup(&catalog, "huggingface.co", Some("huggingface-hub"));
    let vertex = catalog.by_name("google-vertex-ai").unwrap();
    assert_eq!(vertex.class, "interactive");
    assert_eq!(
        vertex.hosts.last().map(String::as_str),
        Some("africa-south1-aiplatform.googleapis.com")
    );
    expect_lookup(
        &catalog,
        "africa-south1-aiplatform.googleapis.com",
        Some("google-vertex-ai"),
    );
    expect_lookup(
        &catalog,
        "us-central1-aiplatform.googleapis.com",
        Some("google-vertex-ai"),
    );

    // The built-in catalog itself is untouched.
    assert_eq!(
        Catalog::builtin().by_name("huggingface-hub").unwrap().class,
        "chat"
    );
    expect_lookup(&Catalog::builtin(), "llm.acme.example", None);
}

#[test]
fn from_config_rejects_what_validation_would() {
    let mut config = Config::default();
    let entry = |name: &str, class: Option<&str>, hosts: &[&str]| ProviderConfig {
        name: name.into(),
        display: None,
        class: class.map(Into::into),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    };
    config.providers = vec![
        entry("acme", Some("premium"), &["llm.acme.example", "*.ai"]),
        entry("openai", None, &["API.OPENAI.COM"]),
        entry("acme", None, &["x.acme.example"]),
        entry("empty", None, &[]),
    ];
    let errors = Catalog::from_config(&config).expect_err("the entries are wrong");
    assert_eq!(
        errors,
        [
            CatalogError::Class {
                provider: "acme".into(),
                class: "premium".into()
            },
            CatalogError::Pattern {
                provider: "acme".into(),
                pattern: "*.ai".into(),
                problem: "a wildcard needs at least two labels after it, as in \"*.example.com\""
                    .into()
            },
            CatalogError::HostTaken {
                provider: "openai".into(),
                pattern: "API.OPENAI.COM".into(),
                owner: "openai".into()
            },
            CatalogError::DuplicateName("acme".into()),
            CatalogError::NoHosts("empty".into()),
        ]
    );
}

#[test]
fn config_errors_are_located() {
    // An unknown provider in a rule, at the name.
    let text =
        format!("{HEAD}[[rules]]\nclass = \"fast\"\nproviders = [\"openai\", \"antropic\"]\n");
    assert_eq!(
        config_errors(&text),
        ["8:24: unknown provider \"antropic\" (did you mean \"anthropic\"?); use a name from catalog/providers.toml or add the provider with [[providers]]"]
    );

    // A bad pattern, at the pattern.
    let text = format!("{HEAD}\n[[providers]]\nname = \"acme\"\nhosts = [\"llm.acme.example\", \"llm-*.acme.example\"]\n");
    assert_eq!(
        config_errors(&text),
        ["9:30: invalid host pattern \"llm-*.acme.example\": \"*\" must be a whole label, as in \"*.example.com\" or \"api.*.example.com\""]
    );

    // Duplicates: a pattern twice in the config, a built-in pattern, a name twice.
    let text = format!(
        "{HEAD}[[providers]]\nname = \"acme\"\nhosts = [\"*.acme.example\"]\n[[providers]]\nname = \"acme\"\nhosts = [\"*.ACME.example\", \"claude.ai\"]\n"
    );
    assert_eq!(
        config_errors(&text),
        [
            "10:8: duplicate provider name \"acme\"; give all of its hosts in one entry (first at line 7)",
            "11:10: duplicate host pattern \"*.ACME.example\" (first at line 8)",
            "11:28: host \"claude.ai\" already belongs to built-in provider \"claude\"; a pattern belongs to one provider (a more specific pattern, such as an exact name, takes precedence over it)",
        ]
    );

    // A class that is not a provider class (classes defined in [[classes]] are
    // for rules), and an unknown key.
    let text = format!("{HEAD}[[providers]]\nname = \"openai\"\nclass = \"fast\"\n[[providers]]\nname = \"x\"\nhost = [\"x.example\"]\n");
    assert_eq!(
        config_errors(&text),
        ["11:1: unknown field \"host\", expected one of \"name\", \"display\", \"class\", \"hosts\""]
    );
    let text = format!("{HEAD}[[providers]]\nname = \"openai\"\nclass = \"fast\"\n");
    assert_eq!(
        config_errors(&text),
        ["8:9: unknown provider class \"fast\"; use \"interactive\", \"chat\" or \"bulk\" (a rule puts a provider's flows in any class)"]
    );
}

#[test]
fn example_config_documents_the_section() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/inferlane.toml");
    let config =
        config::load(&path).unwrap_or_else(|e| panic!("{} must load, got:\n{e}", path.display()));
    assert!(
        !config.providers.is_empty(),
        "the example shows [[providers]]"
    );
    let catalog = Catalog::from_config(&config)
        .unwrap_or_else(|e| panic!("the example's catalog must build, got {e:?}"));
    for rule in &config.rules {
        for name in &rule.providers {
            assert!(
                name == "*" || catalog.by_name(name).is_some(),
                "rule names {name:?}, which the catalog lacks"
            );
        }
    }
    let acme = catalog
        .by_name("acme-llm")
        .expect("the example adds acme-llm");
    expect_lookup(&catalog, "llm.acme.example", Some("acme-llm"));
    assert_eq!(acme.class, "interactive");
}

/// What lan_egress does with dns_names (ebpf/inferlane_dns.h), in Rust: hash the
/// name from its end, look each suffix up at its label start, the longest match
/// wins, an exact entry only for the whole name.
fn kernel_lookup(names: &std::collections::HashMap<u64, inferlane::bpf::abi::DnsName>, host: &str) -> Option<u16> {
    let host = host.to_ascii_lowercase();
    let mut found = None;
    // Suffixes from the shortest to the whole name, as the datapath meets them.
    let starts: Vec<usize> = (0..host.len()).rev().filter(|&i| i == 0 || host.as_bytes()[i - 1] == b'.').collect();
    for at in starts {
        let Some(m) = names.get(&inferlane::bpf::abi::dns_suffix_hash(&host[at..])) else { continue };
        if at == 0 && m.exact != 0 {
            found = Some(m.exact);
        } else if at > 0 && m.wildcard != 0 {
            found = Some(m.wildcard);
        }
    }
    found
}

/// The datapath's own reading of DNS answers never names another provider than
/// the catalog's lookup: over every built-in host, instances of every pattern
/// (suffixes, region wildcards) and names around them, the kernel's answer is
/// the lookup's or nothing (the daemon learns those a moment later). Exact names
/// and suffixes are all covered.
#[test]
fn kernel_names_agree_with_the_catalog_lookup() {
    let catalog = Catalog::builtin();
    let names: std::collections::HashMap<u64, inferlane::bpf::abi::DnsName> = catalog.kernel_names().into_iter().collect();
    let mut hosts = Vec::new();
    for p in catalog.providers() {
        for h in &p.hosts {
            let example = example_of(h);
            hosts.push(example.clone());
            hosts.push(format!("deep.er.{example}"));
            hosts.push(h.trim_start_matches("*.").replace('*', "us-east-1"));
            hosts.push(format!("x{}", h.trim_start_matches("*.")));
            hosts.push(h.trim_start_matches("*.").to_ascii_uppercase());
        }
    }
    let (mut matched, mut left) = (0, 0);
    for host in &hosts {
        let kernel = kernel_lookup(&names, host);
        let lookup = catalog.lookup(host).map(|p| p.id);
        match kernel {
            Some(id) => {
                assert_eq!(Some(id), lookup, "{host}: the kernel names provider {id}, the catalog {lookup:?}");
                matched += 1;
            }
            None => left += usize::from(lookup.is_some()),
        }
    }
    // Only region-wildcard names (and suffixes a region could outrank) are left
    // to the daemon.
    for p in catalog.providers() {
        for h in p.hosts.iter().filter(|h| !h.contains('*')) {
            assert_eq!(kernel_lookup(&names, h), Some(p.id), "{h}: exact names are all in the kernel's table");
        }
    }
    assert!(matched > left, "expected most provider names recognised in the kernel: {matched} matched, {left} left");
}
