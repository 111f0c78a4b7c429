//! Plaintext requests to self-hosted inference servers: the first request line
//! (and Host) of a TCP flow to one of the configured inference ports names the
//! kind of server. HTTP/1.x by request path; gRPC (Triton) by the HTTP/2 preface.
//! Only the first segment is read: request lines are short.

/// The catalog name of the server kind a first request shows, if any.
pub fn server_kind(payload: &[u8]) -> Option<&'static str> {
    if payload.starts_with(b"PRI * HTTP/2.0\r\n") {
        // A gRPC client's connection preface (prior knowledge, no TLS): on an
        // inference port, Triton's gRPC endpoint.
        return Some("triton");
    }
    let line_end = payload.iter().position(|b| *b == b'\r' || *b == b'\n').unwrap_or(payload.len());
    let line = std::str::from_utf8(&payload[..line_end.min(2048)]).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    // The path without a query; absolute-form targets ("http://host/path") too.
    let path = target.split('?').next()?;
    let path = match path.find("://") {
        Some(i) => &path[i + 3..][path[i + 3..].find('/').unwrap_or(path.len() - i - 3)..],
        None => path,
    };
    const KINDS: [(&str, &str); 9] = [
        ("/api/chat", "ollama"),
        ("/api/generate", "ollama"),
        ("/api/embed", "ollama"),
        ("/v1/chat/completions", "openai-compatible"),
        ("/v1/completions", "openai-compatible"),
        ("/v1/embeddings", "openai-compatible"),
        ("/v1/responses", "openai-compatible"),
        ("/generate_stream", "tgi"),
        ("/generate", "tgi"),
    ];
    KINDS.iter().find(|(prefix, _)| path == *prefix || path.starts_with(&format!("{prefix}/"))).map(|(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_name_the_server_kind() {
        let cases: [(&[u8], Option<&str>); 12] = [
            (b"POST /api/chat HTTP/1.1\r\nHost: gpu:11434\r\n\r\n", Some("ollama")),
            (b"POST /api/generate HTTP/1.1\r\n", Some("ollama")),
            (b"POST /v1/chat/completions HTTP/1.1\r\nHost: vllm\r\n", Some("openai-compatible")),
            (b"POST /v1/completions?x=1 HTTP/1.0\r\n", Some("openai-compatible")),
            (b"POST http://vllm:8000/v1/chat/completions HTTP/1.1\r\n", Some("openai-compatible")),
            (b"POST /generate_stream HTTP/1.1\r\n", Some("tgi")),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some("triton")),
            (b"GET / HTTP/1.1\r\n", None),
            (b"GET /api/chatter HTTP/1.1\r\n", None),
            (b"POST /v1/chat/completions", None),
            (b"\x16\x03\x01\x00", None),
            (b"post /api/chat HTTP/1.1\r\n", None),
        ];
        for (payload, want) in cases {
            assert_eq!(server_kind(payload), want, "{:?}", String::from_utf8_lossy(payload));
        }
    }
}
