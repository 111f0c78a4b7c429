//! Is systemd restarting us? `systemctl restart inferlane` (and a package
//! upgrade, which runs it) sends the same SIGTERM as `systemctl stop`; only
//! systemd's job for the unit tells them apart. At SIGTERM the daemon asks
//! systemd for its unit's job over D-Bus, and a `restart` job turns the stop
//! into a handover (see `restart`), so that `systemctl restart` is hitless.
//!
//! A small hand-written D-Bus client (no libdbus, no new dependency): AUTH
//! EXTERNAL, then two `org.freedesktop.DBus.Properties.Get` calls on systemd's
//! private socket (`/run/systemd/private`, root only, no bus daemon needed) or,
//! failing that, on the system bus. Little-endian marshalling of the few types
//! it needs (s, o, g, u, v, (uo)); replies in either byte order.
//!
//! Outside systemd (`INVOCATION_ID` unset) nothing is asked: SIGTERM is a clean
//! stop. Any failure to get an answer is a clean stop too, as before.
//! `INFERLANE_SYSTEMD_BUS` (a socket path) and `INFERLANE_SYSTEMD_UNIT` point
//! the query elsewhere: the end-to-end tests use them with [`fake`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PRIVATE_SOCKET: &str = "/run/systemd/private";
const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";
/// Per read and write: a stop must not hang on a bus that does not answer.
const IO_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("D-Bus {path}: {op}: {source}")]
    Io { path: String, op: &'static str, source: std::io::Error },
    #[error("D-Bus {path}: {message}")]
    Protocol { path: String, message: String },
    #[error("D-Bus error {name}: {message}")]
    Remote { name: String, message: String },
}

impl SystemdError {
    fn protocol(path: &Path, message: impl Into<String>) -> Self {
        SystemdError::Protocol { path: path.display().to_string(), message: message.into() }
    }
}

/// Our unit, when systemd started us: the last `.service` component of our
/// cgroup (`0::/system.slice/inferlane.service`).
pub fn own_unit() -> Option<String> {
    std::env::var_os("INVOCATION_ID")?;
    // Tests name the unit (their cgroup is not a service's).
    if let Ok(unit) = std::env::var("INFERLANE_SYSTEMD_UNIT") {
        return Some(unit);
    }
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    unit_of_cgroup(&cgroup)
}

fn unit_of_cgroup(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|p| p.split('/'))
        .rfind(|c| c.ends_with(".service"))
        .map(str::to_string)
}

/// Whether systemd's job for our unit is a restart. `Ok(false)` outside
/// systemd or with no job (a plain `kill`).
pub fn restart_pending() -> Result<bool, SystemdError> {
    let Some(unit) = own_unit() else { return Ok(false) };
    let job = match std::env::var_os("INFERLANE_SYSTEMD_BUS").map(PathBuf::from) {
        Some(p) => unit_job_type(&p, false, &unit)?,
        None if Path::new(PRIVATE_SOCKET).exists() => unit_job_type(Path::new(PRIVATE_SOCKET), false, &unit)?,
        None => unit_job_type(Path::new(SYSTEM_BUS), true, &unit)?,
    };
    tracing::info!(unit, job = ?job, "systemd job for this unit at SIGTERM");
    Ok(is_restart(job.as_deref()))
}

/// Job types that stop the unit to start it again.
pub fn is_restart(job: Option<&str>) -> bool {
    matches!(job, Some("restart" | "try-restart" | "reload-or-restart" | "reload-or-try-restart"))
}

/// The type of the job systemd has for `unit` now (None: no job). `bus`: the
/// socket is a bus daemon's (Hello first, messages addressed to systemd), not
/// systemd's private peer-to-peer socket.
pub fn unit_job_type(socket: &Path, bus: bool, unit: &str) -> Result<Option<String>, SystemdError> {
    let mut c = Connection::open(socket, bus)?;
    let dest = bus.then_some("org.freedesktop.systemd1");
    let unit_path = format!("/org/freedesktop/systemd1/unit/{}", bus_label(unit));
    let (sig, body) = c.call(
        &unit_path,
        "org.freedesktop.DBus.Properties",
        "Get",
        dest,
        "ss",
        &strings(&["org.freedesktop.systemd1.Unit", "Job"]),
    )?;
    let (id, job_path) = Reader::new(&body, c.little).variant_uo(&sig).map_err(|m| SystemdError::protocol(socket, m))?;
    if id == 0 {
        return Ok(None);
    }
    let (sig, body) = c.call(
        &job_path,
        "org.freedesktop.DBus.Properties",
        "Get",
        dest,
        "ss",
        &strings(&["org.freedesktop.systemd1.Job", "JobType"]),
    )?;
    let kind = Reader::new(&body, c.little).variant_s(&sig).map_err(|m| SystemdError::protocol(socket, m))?;
    Ok(Some(kind))
}

/// systemd's object path label: bytes other than [A-Za-z0-9] (and a leading
/// digit) as `_xx`.
pub fn bus_label(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// One connection, authenticated.
pub struct Connection {
    stream: UnixStream,
    path: PathBuf,
    serial: u32,
    /// Byte order of the last reply.
    little: bool,
}

impl Connection {
    pub fn open(socket: &Path, bus: bool) -> Result<Connection, SystemdError> {
        let p = socket.display().to_string();
        let io = |op: &'static str| {
            let p = p.clone();
            move |source| SystemdError::Io { path: p, op, source }
        };
        let stream = UnixStream::connect(socket).map_err(io("connect"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io("timeout"))?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io("timeout"))?;
        let mut c = Connection { stream, path: socket.to_path_buf(), serial: 0, little: true };
        let uid: String = nix::unistd::geteuid().as_raw().to_string().bytes().map(|b| format!("{b:02x}")).collect();
        c.stream.write_all(format!("\0AUTH EXTERNAL {uid}\r\n").as_bytes()).map_err(io("auth"))?;
        let line = c.read_line().map_err(io("auth"))?;
        if !line.starts_with("OK ") {
            return Err(SystemdError::protocol(socket, format!("authentication refused: {line:?}")));
        }
        c.stream.write_all(b"BEGIN\r\n").map_err(io("begin"))?;
        if bus {
            c.call("/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello", Some("org.freedesktop.DBus"), "", &[])?;
        }
        Ok(c)
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        // Byte by byte: nothing may be read past the line (the server sends
        // nothing more before BEGIN anyway).
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            self.stream.read_exact(&mut b)?;
            line.push(b[0]);
            if line.len() > 512 {
                return Err(std::io::Error::other("auth line too long"));
            }
        }
        Ok(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned())
    }

    /// A method call; returns the reply's signature and body.
    pub fn call(
        &mut self,
        path: &str,
        interface: &str,
        member: &str,
        destination: Option<&str>,
        signature: &str,
        body: &[u8],
    ) -> Result<(String, Vec<u8>), SystemdError> {
        self.serial += 1;
        let serial = self.serial;
        let msg = method_call(serial, path, interface, member, destination, signature, body);
        let p = self.path.display().to_string();
        self.stream.write_all(&msg).map_err(|source| SystemdError::Io { path: p.clone(), op: "send", source })?;
        // Skip signals and anything else until our reply.
        for _ in 0..64 {
            let m = read_message(&mut self.stream).map_err(|source| SystemdError::Io { path: p.clone(), op: "receive", source })?;
            let m = parse_message(&m).map_err(|e| SystemdError::protocol(&self.path, e))?;
            if m.reply_serial != Some(serial) {
                continue;
            }
            self.little = m.little;
            return match m.kind {
                MSG_RETURN => Ok((m.signature, m.body)),
                MSG_ERROR => {
                    let message = if m.signature.starts_with('s') {
                        Reader::new(&m.body, m.little).string().unwrap_or_default()
                    } else {
                        String::new()
                    };
                    Err(SystemdError::Remote { name: m.error_name.unwrap_or_default(), message })
                }
                k => Err(SystemdError::protocol(&self.path, format!("unexpected message type {k} in reply"))),
            };
        }
        Err(SystemdError::protocol(&self.path, "no reply among 64 messages"))
    }
}

pub const MSG_CALL: u8 = 1;
pub const MSG_RETURN: u8 = 2;
pub const MSG_ERROR: u8 = 3;

const FIELD_PATH: u8 = 1;
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_ERROR_NAME: u8 = 4;
const FIELD_REPLY_SERIAL: u8 = 5;
const FIELD_DESTINATION: u8 = 6;
const FIELD_SIGNATURE: u8 = 8;

/// Little-endian writer; offsets are from the message start (alignment).
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn pad(&mut self, to: usize) {
        while !self.buf.len().is_multiple_of(to) {
            self.buf.push(0);
        }
    }
    pub fn u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// `s` and `o`.
    pub fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    /// `g`.
    pub fn signature(&mut self, s: &str) {
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
}

/// A body of strings (`s...`).
pub fn strings(items: &[&str]) -> Vec<u8> {
    let mut w = Writer::default();
    for s in items {
        w.string(s);
    }
    w.buf
}

/// A complete message: header, fields, body.
#[allow(clippy::too_many_arguments)]
pub fn message(
    kind: u8,
    serial: u32,
    fields: &[(u8, char, &str)],
    reply_serial: Option<u32>,
    signature: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut w = Writer::default();
    w.buf.extend_from_slice(&[b'l', kind, 0, 1]);
    w.buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    w.buf.extend_from_slice(&serial.to_le_bytes());
    w.buf.extend_from_slice(&[0; 4]); // array length, below
    let start = w.buf.len();
    for &(code, t, value) in fields {
        w.pad(8);
        w.buf.push(code);
        w.signature(&t.to_string());
        match t {
            'g' => w.signature(value),
            _ => w.string(value),
        }
    }
    if let Some(r) = reply_serial {
        w.pad(8);
        w.buf.push(FIELD_REPLY_SERIAL);
        w.signature("u");
        w.u32(r);
    }
    if !signature.is_empty() {
        w.pad(8);
        w.buf.push(FIELD_SIGNATURE);
        w.signature("g");
        w.signature(signature);
    }
    let len = (w.buf.len() - start) as u32;
    w.buf[12..16].copy_from_slice(&len.to_le_bytes());
    w.pad(8);
    w.buf.extend_from_slice(body);
    w.buf
}

fn method_call(
    serial: u32,
    path: &str,
    interface: &str,
    member: &str,
    destination: Option<&str>,
    signature: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut fields = vec![(FIELD_PATH, 'o', path), (FIELD_INTERFACE, 's', interface), (FIELD_MEMBER, 's', member)];
    if let Some(d) = destination {
        fields.push((FIELD_DESTINATION, 's', d));
    }
    message(MSG_CALL, serial, &fields, None, signature, body)
}

/// Read one whole message (header, fields, padding, body).
pub fn read_message(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut m = vec![0u8; 16];
    r.read_exact(&mut m)?;
    let little = match m[0] {
        b'l' => true,
        b'B' => false,
        _ => return Err(std::io::Error::other("not a D-Bus message")),
    };
    let u = |b: &[u8]| {
        let a: [u8; 4] = b.try_into().expect("4 bytes");
        if little { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    let body = u(&m[4..8]) as usize;
    let fields = u(&m[12..16]) as usize;
    let total = (16 + fields).next_multiple_of(8) + body;
    if total > 1 << 20 {
        return Err(std::io::Error::other("D-Bus message too large"));
    }
    m.resize(total, 0);
    r.read_exact(&mut m[16..])?;
    Ok(m)
}

/// What we need of a received message.
#[derive(Debug, Default)]
pub struct Parsed {
    pub kind: u8,
    pub little: bool,
    pub serial: u32,
    pub reply_serial: Option<u32>,
    pub signature: String,
    pub error_name: Option<String>,
    pub path: Option<String>,
    pub member: Option<String>,
    pub body: Vec<u8>,
}

pub fn parse_message(m: &[u8]) -> Result<Parsed, String> {
    if m.len() < 16 {
        return Err("short message".into());
    }
    let little = m[0] == b'l';
    let mut r = Reader::new(m, little);
    r.pos = 4;
    let body_len = r.u32()? as usize;
    let serial = r.u32()?;
    let fields_len = r.u32()? as usize;
    let end = 16 + fields_len;
    let mut p = Parsed { kind: m[1], little, serial, ..Parsed::default() };
    while r.pos < end {
        r.align(8)?;
        if r.pos >= end {
            break;
        }
        let code = r.byte()?;
        let sig = r.signature()?;
        match (code, sig.as_str()) {
            (FIELD_REPLY_SERIAL, "u") => p.reply_serial = Some(r.u32()?),
            (FIELD_SIGNATURE, "g") => p.signature = r.signature()?,
            (FIELD_ERROR_NAME, "s") => p.error_name = Some(r.string()?),
            (FIELD_PATH, "o") => p.path = Some(r.string()?),
            (FIELD_MEMBER, "s") => p.member = Some(r.string()?),
            (_, "s" | "o") => {
                r.string()?;
            }
            (_, "g") => {
                r.signature()?;
            }
            (_, "u") => {
                r.u32()?;
            }
            (c, s) => return Err(format!("header field {c} of type {s} not understood")),
        }
    }
    let body_start = end.next_multiple_of(8);
    p.body = m.get(body_start..body_start + body_len).ok_or("body past the end")?.to_vec();
    Ok(p)
}

/// Reads from `buf`; alignment is relative to `buf`'s start (a body starts
/// 8-aligned in its message, so body-relative alignment is the same).
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    little: bool,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], little: bool) -> Self {
        Reader { buf, pos: 0, little }
    }
    fn align(&mut self, to: usize) -> Result<(), String> {
        self.pos = self.pos.next_multiple_of(to);
        if self.pos > self.buf.len() {
            return Err("alignment past the end".into());
        }
        Ok(())
    }
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.buf.get(self.pos).ok_or("byte past the end")?;
        self.pos += 1;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.align(4)?;
        let b: [u8; 4] = self.buf.get(self.pos..self.pos + 4).ok_or("u32 past the end")?.try_into().expect("4 bytes");
        self.pos += 4;
        Ok(if self.little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let s = self.buf.get(self.pos..self.pos + len).ok_or("string past the end")?;
        self.pos += len + 1;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
    fn signature(&mut self) -> Result<String, String> {
        let len = self.byte()? as usize;
        let s = self.buf.get(self.pos..self.pos + len).ok_or("signature past the end")?;
        self.pos += len + 1;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
    /// A `v` holding `(uo)`.
    pub fn variant_uo(&mut self, sig: &str) -> Result<(u32, String), String> {
        if sig != "v" {
            return Err(format!("expected a variant, got {sig:?}"));
        }
        let inner = self.signature()?;
        if inner != "(uo)" {
            return Err(format!("expected (uo) in the variant, got {inner:?}"));
        }
        self.align(8)?;
        Ok((self.u32()?, self.string()?))
    }
    /// A `v` holding `s`.
    pub fn variant_s(&mut self, sig: &str) -> Result<String, String> {
        if sig != "v" {
            return Err(format!("expected a variant, got {sig:?}"));
        }
        let inner = self.signature()?;
        if inner != "s" {
            return Err(format!("expected s in the variant, got {inner:?}"));
        }
        self.string()
    }
    /// A plain `s` body.
    pub fn plain_string(&mut self) -> Result<String, String> {
        self.string()
    }
}

/// A fake systemd for tests (here and the daemon's end-to-end tests, through
/// `INFERLANE_SYSTEMD_BUS`): one connection on a private socket.
pub mod fake {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake systemd on a private socket: authenticates, then answers the
    /// Properties.Get calls for the unit's Job and the job's JobType. Returns
    /// (path, signature, body) of each call once the client hangs up.
    pub fn fake_systemd(listener: UnixListener, job: Option<(u32, &'static str)>) -> std::thread::JoinHandle<Vec<(String, String, Vec<u8>)>> {
        std::thread::spawn(move || {
            // Nobody calling within 10 s: nothing seen (the caller's assertion
            // says so, rather than a test hanging).
            listener.set_nonblocking(true).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return Vec::new(),
                }
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut auth = Vec::new();
            let mut b = [0u8; 1];
            while !auth.ends_with(b"\r\n") {
                s.read_exact(&mut b).unwrap();
                auth.push(b[0]);
            }
            assert!(auth.starts_with(b"\0AUTH EXTERNAL "), "{auth:?}");
            s.write_all(b"OK 0123456789abcdef0123456789abcdef\r\n").unwrap();
            let mut begin = [0u8; 7];
            s.read_exact(&mut begin).unwrap();
            assert_eq!(&begin, b"BEGIN\r\n");
            let mut seen = Vec::new();
            let mut serial = 100;
            loop {
                let Ok(m) = read_message(&mut s) else { return seen };
                let p = parse_message(&m).unwrap();
                let path = p.path.clone().unwrap();
                seen.push((path.clone(), p.signature.clone(), p.body.clone()));
                // A signal first, which the client must skip.
                serial += 1;
                s.write_all(&message(4, serial, &[(FIELD_PATH, 'o', "/x"), (FIELD_INTERFACE, 's', "x.y"), (FIELD_MEMBER, 's', "Z")], None, "", &[])).unwrap();
                let mut w = Writer::default();
                let sig = if path.starts_with("/org/freedesktop/systemd1/unit/") {
                    w.signature("(uo)");
                    w.pad(8);
                    let (id, _) = job.unwrap_or((0, ""));
                    w.u32(id);
                    w.string(if id == 0 { "/" } else { "/org/freedesktop/systemd1/job/7" });
                    "v"
                } else {
                    w.signature("s");
                    w.string(job.unwrap().1);
                    "v"
                };
                serial += 1;
                s.write_all(&message(MSG_RETURN, serial, &[], Some(p.serial), sig, &w.buf)).unwrap();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::fake::fake_systemd;
    use std::os::unix::net::UnixListener;

    #[test]
    fn unit_names_and_labels() {
        assert_eq!(unit_of_cgroup("0::/system.slice/inferlane.service\n").as_deref(), Some("inferlane.service"));
        assert_eq!(unit_of_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        assert_eq!(bus_label("inferlane.service"), "inferlane_2eservice");
        assert_eq!(bus_label("2x-y"), "_32x_2dy");
        assert!(is_restart(Some("restart")) && is_restart(Some("try-restart")));
        assert!(!is_restart(Some("stop")) && !is_restart(None));
    }

    #[test]
    fn asks_a_fake_systemd_for_the_units_job() {
        for (job, want) in [(Some((7, "restart")), Some("restart")), (Some((7, "stop")), Some("stop")), (None, None)] {
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("private");
            let server = fake_systemd(UnixListener::bind(&sock).unwrap(), job);
            let got = unit_job_type(&sock, false, "inferlane.service").unwrap();
            assert_eq!(got.as_deref(), want);
            let seen = server.join().unwrap();
            assert_eq!(seen[0].0, "/org/freedesktop/systemd1/unit/inferlane_2eservice");
            assert_eq!(seen[0].1, "ss");
            let mut r = Reader::new(&seen[0].2, true);
            assert_eq!((r.plain_string().unwrap(), r.plain_string().unwrap()), ("org.freedesktop.systemd1.Unit".into(), "Job".into()));
            if want.is_some() {
                assert_eq!(seen[1].0, "/org/freedesktop/systemd1/job/7");
            }
        }
    }

    /// Against a real bus daemon (dbus-daemon, a private one on a temporary
    /// socket): Hello, then GetNameOwner, an error reply, and GetId.
    #[test]
    fn talks_to_a_real_dbus_daemon() {
        assert!(
            std::process::Command::new("dbus-daemon").arg("--version").output().is_ok(),
            "expected dbus-daemon (apt-get install dbus-daemon; make deps installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>custom</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n",
                sock.display()
            ),
        )
        .unwrap();
        let mut daemon = std::process::Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--nosyslog")
            .spawn()
            .unwrap();
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sock.exists() {
            assert!(std::time::Instant::now() < deadline, "dbus-daemon did not listen");
            if let Ok(Some(status)) = daemon.try_wait() {
                panic!("dbus-daemon exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _guard = Kill(daemon);
        let mut c = Connection::open(&sock, true).unwrap();
        let (sig, body) = c
            .call("/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner", Some("org.freedesktop.DBus"), "s", &strings(&["org.freedesktop.DBus"]))
            .unwrap();
        assert_eq!(sig, "s");
        assert_eq!(Reader::new(&body, c.little).plain_string().unwrap(), "org.freedesktop.DBus");
        let err = c
            .call("/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner", Some("org.freedesktop.DBus"), "s", &strings(&["org.example.Nobody"]))
            .unwrap_err();
        assert!(err.to_string().contains("NameHasNoOwner"), "{err}");
        let (sig, body) = c.call("/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId", Some("org.freedesktop.DBus"), "", &[]).unwrap();
        assert_eq!(sig, "s");
        assert_eq!(Reader::new(&body, c.little).plain_string().unwrap().len(), 32);
    }
}
