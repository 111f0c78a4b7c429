//! Operating inferlane as router software: the systemd unit passes `systemd-analyze
//! verify` and rates 2.5 or lower in `systemd-analyze security`; the Debian package
//! builds, lists what it should, installs, runs `inferlane check` from /usr/bin,
//! keeps a changed conffile and purges to nothing; a config file others could
//! change is refused by `check` and `run`.
//!
//! The package test is privileged (dpkg -i as root): it fails rather than skips
//! under INFERLANE_REQUIRE_PRIVILEGED=1, refuses to run on a machine that already
//! has inferlane installed, and purges the package again also when it fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use inferlane::lab::require_root_or_skip;

const PACKAGE: &str = "inferlane";
/// The capabilities the unit grants, and no others (see the unit's comments).
const CAPABILITIES: [&str; 4] = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_PERFMON"];
/// The rating DESIGN.md and the issue ask for.
const MAX_EXPOSURE: f64 = 2.5;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn unit_path() -> PathBuf {
    repo("systemd/inferlane.service")
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (make deps installs what the tests need)"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `KEY=value` lines of the unit's [Service] section (values of repeated keys joined).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines().filter_map(|l| l.trim().strip_prefix(&prefix)).map(str::to_owned).collect()
}

#[test]
fn unit_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let original = fs::read_to_string(unit_path()).unwrap();
    assert!(original.contains("/usr/bin/inferlane"), "the unit must run /usr/bin/inferlane");
    // verify checks that the binaries exist: point the copy at the one just built.
    let copy = dir.path().join("inferlane.service");
    fs::write(&copy, original.replace("/usr/bin/inferlane", &bin().display().to_string())).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let shown = text(&out);
    assert!(out.status.success(), "systemd-analyze verify failed ({}):\n{shown}", out.status);
    let about_us: Vec<&str> = shown.lines().filter(|l| l.contains("inferlane")).collect();
    assert!(about_us.is_empty(), "systemd-analyze verify complained about the unit:\n{}", about_us.join("\n"));

    // The same check must notice a broken unit, or its silence above proves nothing.
    let broken = dir.path().join("inferlane-broken.service");
    fs::write(&broken, original.replace("/usr/bin/inferlane", "/nonexistent/inferlane")).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&broken));
    assert!(
        !out.status.success() && text(&out).contains("/nonexistent/inferlane"),
        "systemd-analyze verify should reject a unit whose binary is missing; saw {}:\n{}",
        out.status,
        text(&out)
    );
}

#[test]
fn unit_security_exposure_is_at_most_2_5() {
    let out = run(Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(unit_path()));
    let shown = text(&out);
    let needle = "Overall exposure level for inferlane.service:";
    let line = shown
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} line in systemd-analyze's output:\n{shown}"));
    let score: f64 = line[line.find(needle).unwrap() + needle.len()..]
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {line:?}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= MAX_EXPOSURE, "exposure {score} is above {MAX_EXPOSURE}:\n{shown}");
    // Not by giving up what the rating weighs most.
    for held in ["CapabilityBoundingSet=~CAP_SYS_ADMIN", "ProtectSystem=", "NoNewPrivileges=", "ProtectKernelModules="] {
        assert!(
            shown.lines().any(|l| l.starts_with('✓') && l.contains(held)),
            "expected {held} to be satisfied:\n{shown}"
        );
    }
}

#[test]
fn unit_agrees_with_the_binary_and_the_config() {
    let unit = fs::read_to_string(unit_path()).unwrap();
    let config = "/etc/inferlane/inferlane.toml";
    assert_eq!(unit_values(&unit, "Type"), ["notify"], "the daemon sends READY=1");
    assert_eq!(unit_values(&unit, "ExecStartPre"), [format!("/usr/bin/inferlane check -c {config}")]);
    assert_eq!(unit_values(&unit, "ExecStart"), [format!("/usr/bin/inferlane run -c {config}")]);
    assert_eq!(unit_values(&unit, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(unit_values(&unit, "Restart"), ["on-failure"]);
    // exit 2 is a config error: restarting would not fix it.
    assert_eq!(unit_values(&unit, "RestartPreventExitStatus"), ["2"]);
    // A handover exits 75: success, and the successor starts at once; the state
    // file in the runtime directory must survive until it does.
    let handover = inferlane::restart::EXIT_HANDOVER.to_string();
    assert_eq!(unit_values(&unit, "SuccessExitStatus"), std::slice::from_ref(&handover));
    assert_eq!(unit_values(&unit, "RestartForceExitStatus"), [handover]);
    assert_eq!(unit_values(&unit, "RuntimeDirectoryPreserve"), ["restart"]);
    assert_eq!(unit_values(&unit, "RestartSec"), ["500ms"]);
    // Pins live on the bpffs the config names (default), which the unit may write.
    let bpffs = inferlane::config::Daemon::default().bpffs;
    assert!(
        unit_values(&unit, "ReadWritePaths").iter().flat_map(|v| v.split_whitespace()).any(|p| p.trim_start_matches('-') == bpffs.to_string_lossy()),
        "ReadWritePaths must include {}",
        bpffs.display()
    );
    // systemd creates the socket's directory: the default socket must be in it.
    let socket = inferlane::config::Daemon::default().control_socket;
    let runtime = unit_values(&unit, "RuntimeDirectory");
    assert_eq!(runtime.len(), 1);
    assert_eq!(socket.parent(), Some(Path::new("/run").join(&runtime[0]).as_path()), "socket {}", socket.display());
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let values = unit_values(&unit, key);
        let mut caps: Vec<&str> = values.iter().flat_map(|v| v.split_whitespace()).collect();
        caps.sort_unstable();
        assert_eq!(caps, CAPABILITIES, "{key}");
    }
}

/// Runs `inferlane ARGS -c FILE` and returns (exit code, stderr).
fn inferlane(args: &[&str], config: &Path) -> (Option<i32>, String) {
    let out = run(Command::new(bin()).args(args).arg("-c").arg(config));
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The example config with the control socket moved into `dir`.
fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("inferlane.toml");
    let example = fs::read_to_string(repo("config/inferlane.toml")).unwrap();
    let socket = dir.join("control.sock");
    let text = example.replace("\"/run/inferlane/control.sock\"", &format!("{:?}", socket.display().to_string()));
    assert_ne!(text, example, "the example config names its control socket");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_writable_by_others_is_refused_by_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path());
    let file = path.display().to_string();
    let chmod = |mode: u32| fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();

    chmod(0o644);
    let (code, stderr) = inferlane(&["check"], &path);
    assert_eq!(code, Some(0), "mode 0644 must pass; stderr:\n{stderr}");

    for (mode, who) in [(0o666, "its group and by others"), (0o646, "others"), (0o664, "its group")] {
        chmod(mode);
        let expected = format!("{file}: is writable by {who} (mode {mode:04o}); ");
        for command in ["check", "run"] {
            let (code, stderr) = inferlane(&[command], &path);
            assert_eq!(code, Some(2), "`{command}` of a mode {mode:04o} config: expected exit 2, stderr:\n{stderr}");
            assert!(
                stderr.starts_with(&expected) && stderr.contains(&format!("chmod go-w {file}")),
                "`{command}` of a mode {mode:04o} config: expected {expected:?}..., saw:\n{stderr}"
            );
        }
        // `run` refused before it did anything: not even the control socket.
        assert!(!dir.path().join("control.sock").exists(), "run bound its socket despite the refusal");
    }

    // The library refuses it too (reload goes through the same load).
    chmod(0o666);
    let errors = inferlane::config::load(&path).expect_err("a mode 0666 config must not load");
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!(matches!(errors.0[0], inferlane::config::ConfigError::Untrusted { .. }), "{:?}", errors.0[0]);

    chmod(0o600);
    let (code, stderr) = inferlane(&["check"], &path);
    assert_eq!(code, Some(0), "mode 0600 must pass again; stderr:\n{stderr}");
}

#[test]
fn config_owned_by_another_user_is_refused() {
    if !require_root_or_skip("config_owned_by_another_user_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path());
    // nobody: a uid that is neither root nor us.
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let (code, stderr) = inferlane(&["check"], &path);
    let expected = format!("{}: is owned by uid 65534, not by root;", path.display());
    assert_eq!(code, Some(2), "stderr:\n{stderr}");
    assert!(stderr.starts_with(&expected), "expected {expected:?}..., saw:\n{stderr}");
    std::os::unix::fs::chown(&path, Some(0), None).unwrap();
    let (code, stderr) = inferlane(&["check"], &path);
    assert_eq!(code, Some(0), "owned by root again, it must pass; stderr:\n{stderr}");
}

/// What the package puts on the machine.
const INSTALLED: [(&str, u32); 5] = [
    ("/usr/bin/inferlane", 0o755),
    ("/etc/inferlane/inferlane.toml", 0o644),
    ("/usr/lib/systemd/system/inferlane.service", 0o644),
    ("/usr/share/inferlane/grafana-dashboard.json", 0o644),
    ("/usr/share/doc/inferlane/README.md", 0o644),
];
const CONFFILE: &str = "/etc/inferlane/inferlane.toml";

/// `dpkg-query`'s status abbreviation for the package ("ii ", "rc "), or None if
/// dpkg does not know it.
fn dpkg_status() -> Option<String> {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", PACKAGE]));
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !s.is_empty() && s != "un").then_some(s)
}

fn dpkg(args: &[&str]) {
    let out = run(Command::new("dpkg").args(args).env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(out.status.success(), "dpkg {args:?} failed ({}):\n{}", out.status, text(&out));
}

/// Purges the package when dropped, also when the test panics.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if dpkg_status().is_some() {
            let out = Command::new("dpkg").args(["-P", PACKAGE]).stdin(Stdio::null()).output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("cleanup: dpkg -P {PACKAGE} failed: {out:?}");
            }
        }
    }
}

/// Files that deb-systemd-helper keeps about the unit (enable state, masks).
fn systemd_helper_state() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in ["/var/lib/systemd/deb-systemd-helper-enabled", "/var/lib/systemd/deb-systemd-helper-masked"] {
        let mut stack = vec![PathBuf::from(dir)];
        while let Some(d) = stack.pop() {
            let Ok(entries) = fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    stack.push(p);
                } else if p.file_name().is_some_and(|n| n.to_string_lossy().contains("inferlane")) {
                    found.push(p);
                }
            }
        }
    }
    found
}

/// Processes running the installed binary.
fn installed_daemons() -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| fs::read_link(e.path().join("exe")).is_ok_and(|p| p == Path::new("/usr/bin/inferlane")))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn package_builds_installs_and_purges_cleanly() {
    if !require_root_or_skip("package_builds_installs_and_purges_cleanly") {
        return;
    }
    let started = Instant::now();
    // Never replace an inferlane someone installed on this machine.
    assert_eq!(dpkg_status(), None, "the {PACKAGE} package is already on this machine; this test would purge it");
    let present: Vec<&str> = INSTALLED
        .iter()
        .map(|(p, _)| *p)
        .chain(["/etc/inferlane", "/lib/systemd/system/inferlane.service", "/etc/systemd/system/inferlane.service"])
        .filter(|p| Path::new(p).exists())
        .collect();
    assert!(present.is_empty(), "inferlane files are already on this machine ({present:?}); this test would replace them");

    // Build from the debug binary cargo test just built: no release build in CI.
    let out_dir = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run(Command::new(&cargo)
        .args(["deb", "--no-build", "--profile", "dev", "--strip", "--fast", "--offline", "--manifest-path"])
        .arg(repo("Cargo.toml"))
        .arg("--output")
        .arg(out_dir.path()));
    assert!(out.status.success(), "cargo deb failed (make deb installs cargo-deb):\n{}", text(&out));
    let debs: Vec<PathBuf> = fs::read_dir(out_dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "expected one .deb in {}, saw {debs:?}", out_dir.path().display());
    let deb = &debs[0];
    let built = started.elapsed();

    // Contents, modes and owners.
    let listing = String::from_utf8(run(Command::new("dpkg-deb").arg("-c").arg(deb)).stdout).unwrap();
    for (path, mode) in INSTALLED {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(".{path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        let perms = format!("-{}", mode_string(mode));
        // dpkg-deb shows owners by name or, for cargo-deb's archives, by number.
        let owned = [format!("{perms} root/root "), format!("{perms} 0/0 ")];
        assert!(owned.iter().any(|o| line.starts_with(o)), "{path}: expected {perms} owned by root, saw {line:?}");
    }
    let field = |name: &str| String::from_utf8(run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name)).stdout).unwrap();
    let depends = field("Depends");
    assert!(depends.contains("libc6"), "Depends should name libc6: {depends:?}");
    for build_only in ["clang", "llvm", "libbpf"] {
        assert!(!depends.contains(build_only), "{build_only} is needed only to build: Depends {depends:?}");
    }
    let control = tempfile::tempdir().unwrap();
    assert!(run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(control.path())).status.success());
    let conffiles = fs::read_to_string(control.path().join("conffiles")).unwrap_or_default();
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), [CONFFILE], "conffiles");

    // Install. From here on the guard purges, whatever happens.
    let _purge = Purge;
    dpkg(&["-i", &deb.display().to_string()]);
    assert_eq!(dpkg_status().as_deref(), Some("ii"), "after dpkg -i");
    for (path, src) in [
        ("/usr/lib/systemd/system/inferlane.service", "systemd/inferlane.service"),
        (CONFFILE, "config/inferlane.toml"),
        ("/usr/share/inferlane/grafana-dashboard.json", "grafana/inferlane.json"),
    ] {
        assert_eq!(fs::read(path).unwrap(), fs::read(repo(src)).unwrap(), "{path} should be the repo's {src}");
    }
    let version = |b: &Path| text(&run(Command::new(b).arg("--version")));
    assert_eq!(version(Path::new("/usr/bin/inferlane")), version(bin()), "the installed binary");
    let out = run(Command::new("/usr/bin/inferlane").args(["check", "-c", CONFFILE]));
    assert!(out.status.success(), "inferlane check of the installed config failed:\n{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{CONFFILE}: ok"));
    // The installed unit verifies as installed (its binary now exists).
    let out = run(Command::new("systemd-analyze").args(["verify", "/usr/lib/systemd/system/inferlane.service"]));
    assert!(out.status.success(), "systemd-analyze verify of the installed unit:\n{}", text(&out));
    // Neither enabled nor started: the example config names interfaces this box lacks.
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/inferlane.service");
    assert!(!wants.exists() && !wants.is_symlink(), "the package enabled the unit");
    assert_eq!(installed_daemons(), Vec::<String>::new(), "the package started the daemon");
    // deb-systemd-helper tracks the unit while the package is there; the purge check
    // below must see this state go away, not merely find nothing to look at.
    assert!(!systemd_helper_state().is_empty(), "no deb-systemd-helper state for the installed unit");

    // An operator's edit survives remove and reinstall, with no prompt (stdin is null).
    let edited = format!("{}\n# edited by the operator\n", fs::read_to_string(CONFFILE).unwrap());
    fs::write(CONFFILE, &edited).unwrap();
    dpkg(&["-r", PACKAGE]);
    assert_eq!(dpkg_status().as_deref(), Some("rc"), "after dpkg -r the conffile is kept");
    for (path, _) in INSTALLED.iter().filter(|(p, _)| *p != CONFFILE) {
        assert!(!Path::new(path).exists(), "{path} left after dpkg -r");
    }
    assert_eq!(fs::read_to_string(CONFFILE).unwrap(), edited, "dpkg -r must keep the edited conffile");
    let masked = Path::new("/etc/systemd/system/inferlane.service");
    assert!(masked.is_symlink(), "dpkg -r masks the removed unit (deb-systemd-helper), so a stale enable cannot start it");
    dpkg(&["-i", &deb.display().to_string()]);
    assert_eq!(fs::read_to_string(CONFFILE).unwrap(), edited, "reinstalling must keep the edited conffile");

    // Purge: nothing left, the conffile and its directory included.
    dpkg(&["-P", PACKAGE]);
    assert_eq!(dpkg_status(), None, "after dpkg -P");
    for path in INSTALLED.iter().map(|(p, _)| *p).chain(["/etc/inferlane", "/usr/share/inferlane", "/usr/share/doc/inferlane"]) {
        assert!(!Path::new(path).exists(), "{path} left after dpkg -P");
    }
    assert!(!masked.exists() && !masked.is_symlink(), "the unit's mask was left after dpkg -P");
    assert_eq!(systemd_helper_state(), Vec::<PathBuf>::new(), "deb-systemd-helper state left after dpkg -P");
    eprintln!(
        "package test: deb built in {:.1} s, whole test {:.1} s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// `0o755` → `rwxr-xr-x`.
fn mode_string(mode: u32) -> String {
    (0..9)
        .map(|i| {
            let bit = 1 << (8 - i);
            if mode & bit == 0 {
                '-'
            } else {
                ['r', 'w', 'x'][i % 3]
            }
        })
        .collect()
}

#[test]
fn control_socket_is_private_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run-inferlane");
    let path = run_dir.join("control.sock");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut socket = rt.block_on(async { inferlane::control::server::ControlSocket::bind(&path) }).unwrap();
    let meta = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(p).unwrap();
        (m.mode() & 0o7777, m.uid())
    };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(meta(&path), (0o600, euid), "socket mode and owner (0o600 = 384)");
    assert_eq!(meta(&run_dir), (0o700, euid), "the directory the daemon made for it (0o700 = 448)");
    socket.remove().unwrap();
    assert!(!path.exists() && !run_dir.exists(), "remove() takes the socket and the directory it made");
}
