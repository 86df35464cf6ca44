//! The ledger load generator's caller: unary gRPC calls written straight onto one HTTP/2
//! connection (the `h2` crate, as hyper uses it), without tonic's client stack.
//!
//! Why not the real client: on this two-core machine the load generator shares the cores
//! with the server it measures. Through `stagecache_client` (tonic's `Channel`: a tower
//! buffer task, hyper's dispatch task, then h2) and a full protobuf decode of every
//! answer, a caller cost about as much CPU per call as the server answering it, so half of
//! the machine went to generating the load. A deployment's callers run on their own
//! machines. The server sees the same requests either way: the bytes of the real client's
//! protobuf bodies (`ledger::Reads` checks that in a test), its HTTP/2 settings, the
//! `grpc-timeout`, `x-request-id` and `authorization` headers it sends, one connection per
//! caller.
//!
//! Every answer is still checked: see [`Verified`].

use crate::process::Result;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Uri};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;

/// One caller: its own TCP connection and HTTP/2 session.
pub struct Caller {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
    authorization: Option<HeaderValue>,
    /// `x-request-id` prefix, like the real client's: this caller's, then a counter.
    id_prefix: String,
    calls: u64,
}

/// The `grpc-timeout` the real client sends with every unary call: its default request
/// timeout, 300 s, as tonic writes it (the finest unit in at most 8 digits). The server
/// arms a deadline for it either way.
const GRPC_TIMEOUT: &str = "300000m";
/// A user agent as long as the real client's (`tonic/0.14.9`), which the server does not read.
const USER_AGENT: &str = "stagecache/bench";
/// How long this caller waits for one answer before it gives up with an error (the
/// server's own deadline above is longer than any measurement).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Caller {
    /// Connects to `url` (`http://host:port`; the bench's servers have no TLS).
    pub async fn connect(url: &str, token: Option<&str>, id: usize) -> Result<Caller> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("the bench's caller speaks plain http://, not {url:?}"))?
            .trim_end_matches('/')
            .to_string();
        let tcp = TcpStream::connect(&authority).await?;
        // As the real client: small answers must not wait out Nagle.
        tcp.set_nodelay(true)?;
        // The real client's HTTP/2 settings (`Client::connect`).
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(8 * 1024 * 1024)
            .initial_connection_window_size(32 * 1024 * 1024)
            .max_frame_size(stagecache_proto::CHUNK_BYTES as u32 + 64 * 1024)
            .handshake::<_, Bytes>(tcp)
            .await?;
        tokio::spawn(async move {
            // Ends when the caller drops its handle or the server goes away; a call in
            // flight then fails with the reason.
            let _ = connection.await;
        });
        let authorization = match token {
            Some(t) => Some(HeaderValue::from_str(&format!("Bearer {t}"))?),
            None => None,
        };
        Ok(Caller {
            send,
            authority,
            authorization,
            id_prefix: format!("bench{id}"),
            calls: 0,
        })
    }

    /// One unary call of `path` (`/package.Service/Method`) with `framed`, an encoded
    /// protobuf in its gRPC frame ([`frame`]); returns the answer's encoded message. A
    /// status other than OK is an error naming the code and message.
    pub async fn unary(&mut self, path: &str, framed: Bytes) -> Result<Bytes> {
        tokio::time::timeout(CALL_TIMEOUT, self.call(path, framed))
            .await
            .map_err(|_| format!("{path}: no answer within {CALL_TIMEOUT:?}"))?
    }

    /// The next call's `x-request-id`, sent as the real client sends it: a literal
    /// outside the connection's HPACK table.
    fn request_id(&self) -> Result<HeaderValue> {
        let mut v = HeaderValue::from_str(&format!("{}-{}", self.id_prefix, self.calls))?;
        v.set_sensitive(true);
        Ok(v)
    }

    async fn call(&mut self, path: &str, framed: Bytes) -> Result<Bytes> {
        self.calls += 1;
        let uri: Uri = format!("http://{}{path}", self.authority).parse()?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", USER_AGENT)
            .header("grpc-timeout", GRPC_TIMEOUT)
            .header("x-request-id", self.request_id()?);
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a.clone());
        }
        let req = req.body(())?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(req, false)?;
        stream.send_data(framed, true)?;
        let response = response.await?;
        let (head, mut body) = response.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(format!("{path}: HTTP status {}", head.status).into());
        }
        // A failed call may come as headers alone ("trailers-only").
        if head.headers.contains_key("grpc-status") {
            check_grpc_status(path, &head.headers)?;
            return Err(format!("{path}: answered OK in headers alone, without a message").into());
        }
        // Most answers come in one DATA frame: kept as it came, joined only when split.
        let mut chunks: Vec<Bytes> = Vec::with_capacity(1);
        while let Some(data) = body.data().await {
            let data = data?;
            let _ = body.flow_control().release_capacity(data.len());
            chunks.push(data);
        }
        let answer = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().expect("one"),
            _ => {
                let mut joined = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                for c in &chunks {
                    joined.extend_from_slice(c);
                }
                joined.freeze()
            }
        };
        let trailers = body
            .trailers()
            .await?
            .ok_or_else(|| format!("{path}: the answer ended without trailers"))?;
        check_grpc_status(path, &trailers)?;
        unframe(path, answer)
    }
}

/// One gRPC message frame: not compressed, a 4-byte big-endian length, the message
/// (given in parts, which are sent as one message).
pub fn frame(parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut b = BytesMut::with_capacity(5 + len);
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    for p in parts {
        b.extend_from_slice(p);
    }
    b.freeze()
}

/// The one message of a unary answer's body.
pub fn unframe(path: &str, mut body: Bytes) -> Result<Bytes> {
    if body.len() < 5 {
        return Err(format!(
            "{path}: an answer of {} bytes has no gRPC frame",
            body.len()
        )
        .into());
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 || len != body.len() {
        return Err(format!(
            "{path}: expected one uncompressed frame, got flag {compressed}, length {len} of {} bytes",
            body.len()
        )
        .into());
    }
    Ok(body)
}

fn check_grpc_status(path: &str, headers: &http::HeaderMap) -> Result<()> {
    let code = headers
        .get("grpc-status")
        .ok_or_else(|| format!("{path}: no grpc-status in the trailers"))?;
    if code == "0" {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Err(format!("{path}: grpc-status {code:?}: {message}").into())
}

/// Answers already checked, by subject: every answer is checked, but one byte for byte
/// equal to an answer already decoded and checked for the same subject is checked by that
/// comparison instead of by decoding it again. (The fill is fixed during a measurement,
/// so one subject's answer does not change; one that did would be decoded and checked.)
#[derive(Default)]
pub struct Verified {
    answers: Mutex<HashMap<usize, Bytes>>,
}

impl Verified {
    /// Checks `answer` for `subject`: by comparison with the last answer checked for it,
    /// or by `check` (which decodes), remembering it if it passes.
    pub fn check(
        &self,
        subject: usize,
        answer: Bytes,
        check: impl FnOnce(&Bytes) -> Result<()>,
    ) -> Result<()> {
        let known = self
            .answers
            .lock()
            .expect("no panic holds it")
            .get(&subject)
            .cloned();
        if known.as_ref() == Some(&answer) {
            return Ok(());
        }
        check(&answer)?;
        // A copy: the answer is a slice of the connection's read buffer, which it would
        // otherwise keep alive whole.
        self.answers
            .lock()
            .expect("no panic holds it")
            .insert(subject, Bytes::copy_from_slice(&answer));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_a_bad_one_is_refused() {
        let f = frame(&[b"hel", b"lo"]);
        assert_eq!(&f[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(
            unframe("/x", f.clone()).unwrap(),
            Bytes::from_static(b"hello")
        );
        // Truncated, compressed, or longer than said: each refused.
        assert!(unframe("/x", f.slice(..4)).is_err());
        assert!(unframe("/x", f.slice(..7)).is_err());
        let mut c = f.to_vec();
        c[0] = 1;
        assert!(unframe("/x", Bytes::from(c)).is_err());
    }

    #[test]
    fn an_answer_is_decoded_until_one_passes_then_compared() {
        let v = Verified::default();
        let decoded = std::cell::Cell::new(0);
        let ok = |_: &Bytes| {
            decoded.set(decoded.get() + 1);
            Ok(())
        };
        let bad = |_: &Bytes| -> Result<()> { Err("wrong".into()) };
        let a = Bytes::from_static(b"answer a");
        // A failing answer is never remembered.
        assert!(v.check(1, a.clone(), bad).is_err());
        assert!(v.check(1, a.clone(), bad).is_err());
        v.check(1, a.clone(), ok).unwrap();
        v.check(1, a.clone(), bad).unwrap();
        assert_eq!(decoded.get(), 1);
        // A different answer for the same subject is decoded, and checked, again.
        assert!(v.check(1, Bytes::from_static(b"answer b"), bad).is_err());
        // Another subject is its own.
        assert!(v.check(2, a, bad).is_err());
    }

    #[test]
    fn a_failed_status_names_code_and_message() {
        let mut h = http::HeaderMap::new();
        assert!(check_grpc_status("/x", &h).is_err());
        h.insert("grpc-status", HeaderValue::from_static("0"));
        check_grpc_status("/x", &h).unwrap();
        h.insert("grpc-status", HeaderValue::from_static("5"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("subject%20unknown"),
        );
        let e = check_grpc_status("/x", &h).unwrap_err().to_string();
        assert!(e.contains("\"5\"") && e.contains("subject"), "{e}");
    }
}
