//! The CLI side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{ControlError, Request, Response};

/// Send one request and wait (bounded) for the answer.
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let p = path.display().to_string();
    let io = |op: &'static str| {
        let p = p.clone();
        move |source| ControlError::Io { path: p, op, source }
    };
    let mut stream = UnixStream::connect(path).map_err(io("connect (is the daemon running?)"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io("set timeout"))?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(io("set timeout"))?;
    let mut line = serde_json::to_string(req).expect("requests always serialise");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io("send"))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io("receive"))?;
    let resp: Response =
        serde_json::from_str(answer.trim_end()).map_err(|source| ControlError::Protocol { path: p.clone(), source })?;
    match resp {
        Response::Error { message } => Err(ControlError::Remote { path: p, message }),
        other => Ok(other),
    }
}
