//! The configuration library as `inferlane check` uses it: the shipped example loads,
//! and each kind of mistake is reported at its exact `LINE:COL` with a message that
//! names the offending thing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inferlane::config::{self, Action, ConfigError, Dscp, ExportFormat, Mode, Probe, Queue};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/inferlane.toml")
}

/// All errors for `text`, as (line, col, message). Panics if the text loads.
fn errors(text: &str) -> Vec<(usize, usize, String)> {
    match config::parse(text, "test.toml") {
        Ok(config) => {
            panic!("expected errors, but the config loaded:\n{config:#?}\n--- text ---\n{text}")
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an Err must hold at least one error");
            errors
                .0
                .iter()
                .map(|e| {
                    let (line, col) = e
                        .position()
                        .unwrap_or_else(|| panic!("expected a position in {e}"));
                    (line, col, e.message())
                })
                .collect()
        }
    }
}

/// Exactly one error, at `line:col`, whose message contains every needle.
#[track_caller]
fn expect_error(text: &str, line: usize, col: usize, needles: &[&str]) {
    let seen = errors(text);
    let shown = seen
        .iter()
        .map(|(l, c, m)| format!("  {l}:{c}: {m}"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        seen.len(),
        1,
        "expected one error at {line}:{col}, saw {}:\n{shown}",
        seen.len()
    );
    let (seen_line, seen_col, message) = &seen[0];
    assert_eq!(
        (*seen_line, *seen_col),
        (line, col),
        "expected the error at {line}:{col}, saw it at {seen_line}:{seen_col}: {message}"
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "expected the message to contain {needle:?}, saw: {message}"
        );
    }
}

const LAN: &str = "[lan]\ninterfaces = [\"lan0\"]\n";

#[test]
fn example_config_loads() {
    let path = example_path();
    let config =
        config::load(&path).unwrap_or_else(|e| panic!("{} must load, got:\n{e}", path.display()));

    assert_eq!(config.daemon.mode, Mode::Enforce);
    assert_eq!(config.lan.interfaces, ["lan0"]);

    let names: Vec<_> = config
        .uplinks
        .iter()
        .map(|u| (u.name.as_str(), u.interface.as_str()))
        .collect();
    assert_eq!(names, [("fiber", "wan0"), ("lte", "wwan0")]);
    let fiber = config.uplink("fiber").unwrap();
    assert_eq!(
        fiber.egress_rate.map(|r| r.bits_per_sec()),
        Some(100_000_000)
    );
    assert_eq!(
        fiber.ingress_rate.map(|r| r.bits_per_sec()),
        Some(300_000_000)
    );
    let health = fiber.health.as_ref().expect("fiber has health probes");
    assert_eq!(
        health.probes,
        [
            Probe::Icmp("192.0.2.1".parse().unwrap()),
            Probe::Tcp("192.0.2.10:443".parse().unwrap()),
            Probe::Dns("[2001:db8::53]:53".parse().unwrap()),
        ]
    );
    assert_eq!(health.interval, Duration::from_millis(300));
    let lte = config.uplink("lte").unwrap();
    assert!(lte.metered && lte.priority == 20 && lte.egress_rate.is_none());
    assert_eq!(
        lte.health.as_ref().map(|h| h.interval),
        Some(Duration::from_secs(1))
    );

    let interactive = config.class("interactive").unwrap();
    assert_eq!(
        (interactive.dscp, interactive.queue),
        (Dscp::new(34).unwrap(), Queue::High)
    );
    assert_eq!(interactive.uplinks, ["fiber", "lte"]);
    assert_eq!(config.class("chat").unwrap().dscp.to_string(), "AF41");
    assert_eq!(config.class("bulk").unwrap().dscp, Dscp::LE);

    assert_eq!(config.rules.len(), 4);
    assert_eq!(
        config.rules[1]
            .ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        ["tcp:11434", "tcp:8000-8001"]
    );
    assert_eq!(
        config.rules[1].destinations[1].to_string(),
        "2001:db8:100::/48"
    );
    let block = &config.rules[3];
    assert_eq!(
        (block.action, block.class.as_deref()),
        (Action::Block, None)
    );

    let export = config.export.as_ref().expect("export is configured");
    assert_eq!(
        export.collectors().collect::<Vec<_>>(),
        [
            ("192.0.2.50:4739".parse::<SocketAddr>().unwrap(), ExportFormat::Ipfix),
            ("192.0.2.51:2055".parse::<SocketAddr>().unwrap(), ExportFormat::Netflow9)
        ]
    );
    assert_eq!(export.format, ExportFormat::Ipfix);
    assert_eq!(
        (export.active_timeout, export.inactive_timeout),
        (Duration::from_secs(60), Duration::from_secs(15))
    );
    assert_eq!(
        config.metrics.as_ref().map(|m| m.listen),
        Some("127.0.0.1:9464".parse().unwrap())
    );
}

#[test]
fn unknown_key() {
    expect_error(
        "[lan]\ninterfacez = [\"lan0\"]\n",
        2,
        1,
        &["unknown field \"interfacez\"", "expected \"interfaces\""],
    );
    let text = format!(
        "{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\n  egress = \"10mbit\"\n"
    );
    expect_error(
        &text,
        6,
        3,
        &[
            "unknown field \"egress\"",
            "expected one of",
            "\"egress_rate\"",
        ],
    );
    // Inside an inline table.
    let text = format!("{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\nhealth = {{ probes = [\"icmp:192.0.2.1\"], every = \"1s\" }}\n");
    expect_error(&text, 6, 41, &["unknown field \"every\""]);
    // Unknown top-level section.
    let text = format!("{LAN}\n[metric]\nlisten = \"127.0.0.1:9464\"\n");
    expect_error(&text, 4, 2, &["unknown section \"metric\"", "\"metrics\""]);
}

#[test]
fn missing_required_key_points_at_the_table() {
    let text = format!("{LAN}\n[[uplinks]]\nname = \"fiber\"\n");
    expect_error(&text, 4, 1, &["missing field \"interface\""]);
}

#[test]
fn bad_cidr() {
    let text = format!(
        "{LAN}[[classes]]\nname = \"chat\"\ndscp = \"EF\"\n\n[[rules]]\nclass = \"chat\"\ndestinations = [\"192.0.2.0/24\", \"10.0.0.0/33\"]\n"
    );
    expect_error(
        &text,
        9,
        33,
        &["invalid CIDR \"10.0.0.0/33\": prefix length 33 exceeds 32"],
    );
    let text = format!("{LAN}[[classes]]\nname = \"chat\"\ndscp = \"EF\"\n[[rules]]\nclass = \"chat\"\nclients = [\"10.0.0.1/8\"]\n");
    expect_error(
        &text,
        8,
        12,
        &["\"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"?"],
    );
    let text = format!("{LAN}[[classes]]\nname = \"chat\"\ndscp = \"EF\"\n[[rules]]\nclass = \"chat\"\nclients = [\"2001:db8::/129\"]\n");
    expect_error(
        &text,
        8,
        12,
        &["\"2001:db8::/129\"", "prefix length 129 exceeds 128"],
    );
}

#[test]
fn class_naming_a_missing_uplink() {
    let text = format!(
        "{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\n[[uplinks]]\nname = \"lte\"\ninterface = \"wwan0\"\n[[classes]]\nname = \"chat\"\ndscp = \"AF41\"\nuplinks = [\"fiber\", \"lte2\"]\n"
    );
    expect_error(
        &text,
        12,
        21,
        &["\"lte2\"", "not defined", "\"fiber\", \"lte\""],
    );
}

#[test]
fn duplicate_uplink_name() {
    let text = format!(
        "{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\n\n[[uplinks]]\nname    = \"fiber\"\ninterface = \"wan1\"\n"
    );
    expect_error(
        &text,
        8,
        11,
        &["duplicate uplink name \"fiber\"", "first at line 4"],
    );
}

#[test]
fn bad_rate() {
    let text = format!(
        "{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\negress_rate = \"100mbits\"\n"
    );
    expect_error(
        &text,
        6,
        15,
        &["invalid rate \"100mbits\"", "unknown unit \"mbits\""],
    );
    let text = format!(
        "{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\ningress_rate = \"0kbit\"\n"
    );
    expect_error(
        &text,
        6,
        16,
        &["invalid rate \"0kbit\": must be greater than zero"],
    );
    let text = format!(
        "{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\ningress_rate = 100000\n"
    );
    expect_error(
        &text,
        6,
        16,
        &[
            "invalid type: integer 100000",
            "a rate with a unit, like \"100mbit\"",
        ],
    );
}

#[test]
fn bad_duration() {
    let text = format!(
        "{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\n[uplinks.health]\nprobes = [\"icmp:192.0.2.1\"]\ninterval = \"300\"\n"
    );
    expect_error(
        &text,
        8,
        12,
        &["invalid duration \"300\": missing unit; use ms, s, m or h"],
    );
    let text = format!(
        "{LAN}[export]\ncollectors = [\"192.0.2.50:4739\"]\nactive_timeout = \"1 minute\"\n"
    );
    expect_error(
        &text,
        5,
        18,
        &["invalid duration \"1 minute\"", "unknown unit \"minute\""],
    );
}

#[test]
fn block_rule_with_class() {
    let text = format!(
        "{LAN}[[classes]]\nname = \"bulk\"\ndscp = \"LE\"\n[[rules]]\naction = \"block\"\nproviders = [\"deepseek\"]\nclass = \"bulk\"\n"
    );
    expect_error(&text, 9, 9, &["\"block\" rule takes no class", "\"bulk\""]);
}

#[test]
fn bad_enum_value() {
    let text = format!("[daemon]\nmode = \"enforcing\"\n{LAN}");
    expect_error(
        &text,
        2,
        8,
        &[
            "unknown variant \"enforcing\"",
            "expected \"enforce\" or \"observe\"",
        ],
    );
}

#[test]
fn bad_dscp_port_and_probe() {
    let text = format!("{LAN}[[classes]]\nname = \"chat\"\ndscp = \"AF44\"\n");
    expect_error(&text, 5, 8, &["unknown DSCP \"AF44\""]);
    let text = format!("{LAN}[[classes]]\nname = \"chat\"\ndscp = 64\n");
    expect_error(&text, 5, 8, &["DSCP 64 is out of range 0-63"]);
    let text = format!("{LAN}[[classes]]\nname = \"c\"\ndscp = 0\n[[rules]]\nclass = \"c\"\nports = [\"tcp:443\", \"udp:9-8\"]\n");
    expect_error(&text, 8, 21, &["invalid port \"udp:9-8\"", "reversed"]);
    let text = format!("{LAN}[[uplinks]]\nname = \"a\"\ninterface = \"wan0\"\nhealth = {{ probes = [\"ping:192.0.2.1\"] }}\n");
    expect_error(
        &text,
        6,
        22,
        &[
            "invalid probe \"ping:192.0.2.1\"",
            "unknown probe type \"ping\"",
        ],
    );
}

#[test]
fn syntax_errors() {
    // A table header without its `]`.
    expect_error(
        "[lan\ninterfaces = [\"lan0\"]\n",
        1,
        5,
        &["unclosed table", "expected \"]\""],
    );
    // An array without its `]` at the end of the file: at the end of its line.
    expect_error(
        "[lan]\ninterfaces = [\"lan0\"\n",
        2,
        21,
        &["unclosed array", "expected \"]\""],
    );
    // Arrays may span lines, so with more text after it the parser only notices at
    // the next table header, which it reads as a second element.
    expect_error(
        "[lan]\ninterfaces = [\"lan0\"\n\n[daemon]\n",
        4,
        1,
        &["missing comma between array elements"],
    );
    // A string without its closing quote.
    expect_error(
        "[daemon]\ncontrol_socket = \"/run/x.sock\n",
        2,
        30,
        &["invalid basic string"],
    );
    // The same key twice.
    expect_error(
        "[lan]\ninterfaces = [\"lan0\"]\ninterfaces = [\"lan1\"]\n",
        3,
        1,
        &["duplicate key \"interfaces\""],
    );
}

#[test]
fn all_errors_of_one_kind_are_reported_together() {
    // Shape errors in different tables all show up.
    let text = format!(
        "{LAN}[[uplinks]]\nname = \"fiber\"\ninterface = \"wan0\"\negress_rate = \"fast\"\n\n[[uplinks]]\nname = \"lte\"\ninterface = \"wwan0\"\n\n[[rules]]\nclass = \"x\"\nclients = [\"10.0.0.0/33\"]\n\n[metrics]\nlisten = \"127.0.0.1\"\n"
    );
    let seen = errors(&text);
    let positions: Vec<_> = seen.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(
        positions,
        [(6, 15), (14, 12), (17, 10)],
        "all three shape errors, in file order: {seen:#?}"
    );
    assert!(seen[0].2.contains("\"fast\""), "{seen:#?}");
    assert!(seen[1].2.contains("\"10.0.0.0/33\""), "{seen:#?}");
    assert!(seen[2].2.contains("missing port"), "{seen:#?}");

    // Semantic errors everywhere all show up too.
    let text = "\
[lan]
interfaces = [\"lan0\", \"lan0\"]

[[uplinks]]
name = \"fiber\"
interface = \"lan0\"

[[classes]]
name = \"chat\"
dscp = \"EF\"
uplinks = [\"lte\"]

[[rules]]
class = \"bulk\"
providers = [\"openai\"]

[[rules]]
action = \"block\"

[export]
collectors = []
";
    let seen = errors(text);
    let expected = [
        (2, 23, "duplicate LAN interface \"lan0\""),
        (6, 13, "which is also a LAN interface"),
        (11, 12, "uplink \"lte\", which is not defined"),
        (14, 9, "class \"bulk\", which is not defined"),
        (17, 1, "rule matches nothing"),
        (21, 14, "export needs at least one collector"),
    ];
    assert_eq!(
        seen.len(),
        expected.len(),
        "expected {} errors, saw:\n{seen:#?}",
        expected.len()
    );
    for ((line, col, message), (eline, ecol, needle)) in seen.iter().zip(expected) {
        assert!(
            (*line, *col) == (eline, ecol) && message.contains(needle),
            "expected {eline}:{ecol} containing {needle:?}, saw {line}:{col}: {message}\nall:\n{seen:#?}"
        );
    }
}

#[test]
fn display_names_the_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[lan]\ninterfaces = [\"lan0\"]\n\n[daemon]\nmode = \"fast\"\n",
    )
    .unwrap();
    let errors = config::load(&path).expect_err("mode = \"fast\" is invalid");
    let shown = errors.to_string();
    let expected = format!(
        "{}:5:8: unknown variant \"fast\", expected \"enforce\" or \"observe\"",
        path.display()
    );
    assert_eq!(
        shown, expected,
        "expected the Display line\n  {expected}\nsaw\n  {shown}"
    );
}

#[test]
fn unreadable_file_has_no_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let errors = config::load(&path).expect_err("a missing file cannot load");
    assert_eq!(errors.0.len(), 1);
    assert!(
        matches!(&errors.0[0], ConfigError::Read { .. }),
        "{:?}",
        errors.0[0]
    );
    assert_eq!(errors.0[0].position(), None);
    let shown = errors.to_string();
    let prefix = format!("{}: cannot read: ", path.display());
    assert!(
        shown.starts_with(&prefix) && shown.contains("No such file"),
        "expected {prefix:?}..., saw {shown:?}"
    );
}
