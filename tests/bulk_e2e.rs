//! A model download through the lab: curl fetches a file over TLS by the Hugging
//! Face CDN's name; the SNI names the provider, whose catalog class is "bulk".
//! Its own test binary: a 20 MB transfer would load the machine under the
//! timing-sensitive SNI test if they ran side by side. Needs root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response};
use inferlane::lab::scenario::{DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

fn flows(socket: &Path) -> Vec<FlowInfo> {
    match client::request(socket, &Request::Flows).unwrap() {
        Response::Flows { flows } => flows,
        other => panic!("flows answered {other:?}"),
    }
}

/// A model download: curl fetches a 20 MB file over TLS from a server holding a
/// certificate for the Hugging Face CDN's name. The SNI names the provider, whose
/// catalog class is "bulk"; the config defines a class of that name (LE), so the
/// download is classified bulk with no rule naming it.
#[test]
fn model_downloads_are_bulk() {
    if !require_root_or_skip("model_downloads_are_bulk") {
        return;
    }
    const CDN: &str = "cdn-lfs.huggingface.co";
    let work = WorkDir::new("sni-bulk").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={CDN}"), "-addext", &format!("subjectAltName=DNS:{CDN}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(st.status.success(), "openssl req: {}", String::from_utf8_lossy(&st.stderr));
    // s_server -WWW serves files from its working directory.
    let www = work.path().join("www");
    std::fs::create_dir(&www).unwrap();
    const SIZE: usize = 20 * 1024 * 1024;
    std::fs::write(www.join("model.safetensors"), vec![0x5au8; SIZE]).unwrap();
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let server = format!("cd {} && exec openssl s_server -4 -quiet -accept 443 -cert {c} -key {k} -WWW", www.display());
    lab.spawn(Role::Inet, "sh", &["-c", &server]).unwrap();
    let socket = work.path().join("control.sock");
    let cfg = format!(
        "[daemon]\ncontrol_socket = \"{}\"\nflow_table_size = 4096\n[lan]\ninterfaces = [\"lan0\"]\n\
         [[classes]]\nname = \"bulk\"\ndscp = \"LE\"\nqueue = \"low\"\n",
        socket.display()
    );
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &cfg).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lab.run(Role::Inet, "ss", &["-Hltn", "sport = :443"]).unwrap().trim().is_empty() {
        assert!(std::time::Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = lab
        .command(Role::Lan, "curl")
        .args(["-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "--cacert", &c])
        .args(["--resolve", &format!("{CDN}:443:{}", addr::SERVER_V4), &format!("https://{CDN}/model.safetensors")])
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(got, format!("200 {SIZE}"), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let f = flows(&socket);
    let x = f.iter().find(|x| x.remote_port == 443 && x.proto == "tcp").unwrap_or_else(|| panic!("{f:#?}"));
    assert_eq!(x.provider.as_deref(), Some("huggingface-cdn"), "{x:?}");
    assert_eq!((x.source.as_deref(), x.class.as_deref(), x.rule, x.dscp), (Some("sni"), Some("bulk"), None, Some(1)), "{x:?}");
    assert!(x.down_bytes >= SIZE as u64, "download counted {} bytes: {x:?}", x.down_bytes);
    assert!(!x.streaming, "a bulk download is not a token stream: {x:?}");
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}
