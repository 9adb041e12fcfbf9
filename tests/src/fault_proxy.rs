//! A fault-injecting HTTP/1.1 proxy on loopback, between the daemon and the S3 server. Tests give
//! it rules ("the 2nd PUT of a key containing LOCK: answer 503 SlowDown"); every request that no
//! rule claims is passed through untouched. It records what it saw, so a test can tell that a
//! fault really happened, counts the requests that move data in flight at once, and counts the
//! body bytes that cross it each way (a benchmark's bytes on the wire).

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What to do to a request a rule claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and S3 error code; the server never sees the request.
    Status(u16, &'static str),
    /// Let the server do the work, then answer with this status and code instead of its answer:
    /// the client believes a request failed that actually succeeded.
    AfterSuccess(u16, &'static str),
    /// Let the server do the work, then cut the connection without any answer.
    DropAnswer,
    /// Send the head and half the body of the server's answer, then reset the connection.
    ResetMidBody,
    /// Hold the server's answer back for this long.
    Delay(Duration),
    /// Send the head and half the body of the server's answer, then send nothing for this long
    /// (a connection that stalls without closing), then reset the connection.
    StallMidBody(Duration),
    /// Send the server's answer in pieces of this many bytes, one every `pause`: slow, but
    /// steady.
    Trickle { bytes: usize, pause: Duration },
    /// Let the server answer a listing of multipart uploads, then URL-encode its keys as S3 does
    /// when asked with `encoding-type=url` (moto ignores that parameter for this listing).
    UrlEncodeUploadKeys,
    /// Play a bucket that lives in this region, as AWS does: a request signed for any other
    /// region gets `301 PermanentRedirect` with `x-amz-bucket-region`; one signed for it passes.
    BucketRegion(&'static str),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub method: &'static str,
    /// A substring of the request's path (the key, with the bucket).
    pub path_contains: String,
    /// A substring of the query string (`uploadId`, `partNumber=2`), or empty.
    pub query_contains: String,
    /// Matching requests let through before the fault starts.
    pub skip: usize,
    /// Matching requests faulted; then the rule is spent.
    pub times: usize,
    pub fault: Fault,
}

impl Rule {
    pub fn new(method: &'static str, path_contains: &str, fault: Fault) -> Self {
        Self { method, path_contains: path_contains.into(), query_contains: String::new(), skip: 0, times: 1, fault }
    }

    pub fn query(mut self, contains: &str) -> Self {
        self.query_contains = contains.into();
        self
    }

    pub fn skip(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }

    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    fn matches(&self, method: &str, path: &str, query: &str) -> bool {
        (self.method.is_empty() || self.method == method)
            && path.contains(&self.path_contains)
            && query.contains(&self.query_contains)
    }
}

/// One request as the proxy saw it, and the fault it got, if any.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The KMS key the request asked to encrypt with (`x-amz-server-side-encryption-aws-kms-key-id`).
    pub kms_key: Option<String>,
    /// Whether it asked for an S3 Bucket Key (`x-amz-server-side-encryption-bucket-key-enabled`).
    pub bucket_key: bool,
    pub fault: Option<Fault>,
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    stopping: AtomicBool,
    /// Requests that move data (see `moves_data`) between their arrival and their answer.
    data_in_flight: AtomicUsize,
    data_peak: AtomicUsize,
    /// Answers being written to the client right now (a slow one takes a while).
    answering: AtomicUsize,
    /// Requests received, and the body bytes received from clients and relayed back to them.
    requests: AtomicU64,
    bytes_from_clients: AtomicU64,
    bytes_to_clients: AtomicU64,
}

/// What crossed the proxy since it started or since `FaultProxy::reset_traffic`: requests, and
/// the bytes of request bodies received from clients and of the server's answer bodies sent back
/// to them, as framed on the wire (a chunked body counts its chunk lines). Heads are not counted,
/// nor the bodies of answers the proxy makes up itself (`Fault::Status`, `Fault::BucketRegion`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub requests: u64,
    /// Request bodies: uploads.
    pub up_bytes: u64,
    /// Answer bodies: downloads, listings, error documents.
    pub down_bytes: u64,
}

/// Whether a request moves data: every GET (objects, ranges, listings), and every PUT that
/// carries a body or copies one (objects, parts, part copies). Not: HEAD, DELETE, starting or
/// completing an upload (POST), writing an empty lock.
fn moves_data(method: &str, headers: &Headers) -> bool {
    let has_body = header(headers, "content-length").is_some_and(|len| len.trim() != "0")
        || header(headers, "transfer-encoding").is_some();
    method == "GET" || (method == "PUT" && (has_body || header(headers, "x-amz-copy-source").is_some()))
}

/// Counts one data request in flight while it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn start(shared: &'a Shared) -> Self {
        let now = shared.data_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.data_peak.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.data_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one answer being written while it lives: it ends when the answer is out or the client
/// hung up.
struct Answering<'a>(&'a Shared);

impl<'a> Answering<'a> {
    fn start(shared: &'a Shared) -> Self {
        shared.answering.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// The fault for this request, consuming one use of the first rule that claims it.
    fn fault_for(&self, method: &str, path: &str, query: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().ok()?;
        let rule = rules.iter_mut().find(|r| r.times > 0 && r.matches(method, path, query))?;
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        rule.times -= 1;
        Some(rule.fault.clone())
    }

    /// Sends (part of) an answer's body to the client, counting it.
    fn send_body(&self, writer: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
        writer.write_all(body)?;
        self.bytes_to_clients.fetch_add(body.len() as u64, Ordering::SeqCst);
        Ok(())
    }
}

pub struct FaultProxy {
    pub endpoint: String,
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if shared.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let (shared, upstream) = (shared.clone(), upstream.clone());
                    std::thread::spawn(move || {
                        let _ = serve_connection(client, &upstream, &shared);
                    });
                }
            })
        };
        Self { endpoint: format!("http://127.0.0.1:{port}"), port, shared, acceptor: Some(acceptor) }
    }

    pub fn add(&self, rule: Rule) {
        self.shared.rules.lock().expect("rules").push(rule);
    }

    /// Drops every rule: from now on requests pass untouched.
    pub fn clear_rules(&self) {
        self.shared.rules.lock().expect("rules").clear();
    }

    /// Answers still being written to the client (a trickling one goes on until the client
    /// hangs up).
    pub fn answers_in_progress(&self) -> usize {
        self.shared.answering.load(Ordering::SeqCst)
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("seen").clone()
    }

    /// The requests that got a fault.
    pub fn faulted(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.fault.is_some()).collect()
    }

    /// The most requests that move data (GETs, PUTs with a body, copies) ever in flight at once,
    /// counted from the end of a request to the start of its answer: strictly inside the time
    /// the client waits for it.
    pub fn peak_data_requests(&self) -> usize {
        self.shared.data_peak.load(Ordering::SeqCst)
    }

    /// Requests that move data between their arrival and the start of their answer, right now.
    pub fn data_requests_in_flight(&self) -> usize {
        self.shared.data_in_flight.load(Ordering::SeqCst)
    }

    /// What crossed the proxy since it started or since the last `reset_traffic`.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            requests: self.shared.requests.load(Ordering::SeqCst),
            up_bytes: self.shared.bytes_from_clients.load(Ordering::SeqCst),
            down_bytes: self.shared.bytes_to_clients.load(Ordering::SeqCst),
        }
    }

    /// Starts counting `traffic` from zero again.
    pub fn reset_traffic(&self) {
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.bytes_from_clients.store(0, Ordering::SeqCst);
        self.shared.bytes_to_clients.store(0, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the acceptor
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A request or answer head and its body, as raw bytes.
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
}

fn serve_connection(client: TcpStream, upstream: &str, shared: &Shared) -> std::io::Result<()> {
    // A head and its body go out in two writes: with Nagle's algorithm the second waits for the
    // peer's delayed ACK of the first (40 ms on Linux), on every request and every answer.
    client.set_nodelay(true)?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client;
    let mut server: Option<(BufReader<TcpStream>, TcpStream)> = None;
    loop {
        let Some(head) = read_head(&mut reader)? else { return Ok(()) };
        let (method, target, mut headers) = parse_request_head(&head)?;
        let expects_continue =
            take_header(&mut headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects_continue {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = read_body(&mut reader, &headers, false)?;
        shared.requests.fetch_add(1, Ordering::SeqCst);
        shared.bytes_from_clients.fetch_add(body.len() as u64, Ordering::SeqCst);
        let in_flight = moves_data(&method, &headers).then(|| InFlight::start(shared));
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let fault = shared.fault_for(&method, path, query).filter(|fault| match fault {
            Fault::BucketRegion(region) => !header(&headers, "authorization")
                .is_some_and(|auth| auth.contains(&format!("/{region}/s3/aws4_request"))),
            _ => true,
        });
        if let Ok(mut seen) = shared.seen.lock() {
            let kms_key = header(&headers, "x-amz-server-side-encryption-aws-kms-key-id").map(str::to_string);
            let bucket_key = header(&headers, "x-amz-server-side-encryption-bucket-key-enabled") == Some("true");
            seen.push(Seen {
                method: method.clone(),
                path: path.into(),
                query: query.into(),
                kms_key,
                bucket_key,
                fault: fault.clone(),
            });
        }
        if let Some(Fault::Status(status, code)) = &fault {
            writer.write_all(&error_answer(*status, code))?;
            continue;
        }
        if let Some(Fault::BucketRegion(region)) = &fault {
            writer.write_all(&redirect_answer(region, method == "HEAD"))?;
            continue;
        }
        let request = Message { head: build_head(&head_line(&head), &headers), body };
        if server.is_none() {
            let stream = TcpStream::connect(upstream)?;
            stream.set_nodelay(true)?;
            server = Some((BufReader::new(stream.try_clone()?), stream));
        }
        let Some((server_reader, server_writer)) = server.as_mut() else { return Ok(()) };
        server_writer.write_all(&request.head)?;
        server_writer.write_all(&request.body)?;
        let answer = read_answer(server_reader, method == "HEAD")?;
        drop(in_flight);
        let _answering = Answering::start(shared);
        match fault {
            None => {
                writer.write_all(&answer.head)?;
                shared.send_body(&mut writer, &answer.body)?;
            }
            Some(Fault::AfterSuccess(status, code)) => writer.write_all(&error_answer(status, code))?,
            Some(Fault::DropAnswer) => return reset(writer),
            Some(Fault::ResetMidBody) => {
                writer.write_all(&answer.head)?;
                shared.send_body(&mut writer, &answer.body[..answer.body.len() / 2])?;
                writer.flush()?;
                return reset(writer);
            }
            Some(Fault::UrlEncodeUploadKeys) => {
                let answer = url_encode_upload_keys(answer);
                writer.write_all(&answer.head)?;
                shared.send_body(&mut writer, &answer.body)?;
            }
            Some(Fault::Delay(pause)) => {
                std::thread::sleep(pause);
                writer.write_all(&answer.head)?;
                shared.send_body(&mut writer, &answer.body)?;
            }
            Some(Fault::StallMidBody(pause)) => {
                writer.write_all(&answer.head)?;
                shared.send_body(&mut writer, &answer.body[..answer.body.len() / 2])?;
                writer.flush()?;
                std::thread::sleep(pause);
                return reset(writer);
            }
            Some(Fault::Trickle { bytes, pause }) => {
                writer.write_all(&answer.head)?;
                for piece in answer.body.chunks(bytes.max(1)) {
                    shared.send_body(&mut writer, piece)?;
                    writer.flush()?;
                    std::thread::sleep(pause);
                }
            }
            Some(Fault::Status(..) | Fault::BucketRegion(_)) => unreachable!("answered above"),
        }
    }
}

/// A `ListMultipartUploads` answer as S3 sends it for `encoding-type=url`: every `<Key>` and
/// `<NextKeyMarker>` percent-encoded, and `<EncodingType>url</EncodingType>`. Other answers pass.
fn url_encode_upload_keys(answer: Message) -> Message {
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    let Some(end) = text.find("</ListMultipartUploadsResult>") else { return answer };
    let mut encoded = String::new();
    let mut rest = &text[..end];
    while let Some((before, tag, after)) = ["<Key>", "<NextKeyMarker>"]
        .iter()
        .filter_map(|tag| rest.find(tag).map(|at| (at, *tag)))
        .min()
        .map(|(at, tag)| (&rest[..at], tag, &rest[at + tag.len()..]))
    {
        let close = format!("</{}", &tag[1..]);
        let Some(value_end) = after.find(&close) else { break };
        encoded.push_str(before);
        encoded.push_str(tag);
        encoded.push_str(&percent_encode(&xml_unescape(&after[..value_end])));
        rest = &after[value_end..];
    }
    encoded.push_str(rest);
    encoded.push_str("<EncodingType>url</EncodingType>");
    encoded.push_str(&text[end..]);
    let head = String::from_utf8_lossy(&answer.head)
        .lines()
        .filter(|line| !line.to_ascii_lowercase().starts_with("content-length:") && !line.is_empty())
        .map(|line| format!("{line}\r\n"))
        .collect::<String>()
        + &format!("content-length: {}\r\n\r\n", encoded.len());
    Message { head: head.into_bytes(), body: encoded.into_bytes() }
}

fn xml_unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find(';') else { break };
        let entity = &rest[at + 1..at + end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| entity.strip_prefix('#').map(|dec| dec.parse()))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&rest[at..=at + end]),
        }
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

/// S3's URL encoding of a key: unreserved characters and `/` as they are, the rest `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Closes with a TCP reset, as a dying server or middlebox would.
fn reset(stream: TcpStream) -> std::io::Result<()> {
    rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO))?;
    let _ = stream.shutdown(Shutdown::Read);
    drop(stream);
    Ok(())
}

fn error_answer(status: u16, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status} {code}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nx-amz-request-id: fault\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// S3's answer to a request sent to the wrong region (a HEAD's has no body).
fn redirect_answer(region: &str, to_head: bool) -> Vec<u8> {
    let body = if to_head {
        String::new()
    } else {
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message></Error>".to_string()
    };
    let mut answer = format!(
        "HTTP/1.1 301 Moved Permanently\r\nx-amz-bucket-region: {region}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    if !to_head {
        answer.push_str(&body);
    }
    answer.into_bytes()
}

/// Reads up to and including the blank line; `None` at a clean end of the connection.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        if reader.read_until(b'\n', &mut head)? == 0 {
            return if head.is_empty() { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        if head[before..] == *b"\r\n" {
            return Ok(Some(head));
        }
    }
}

fn head_line(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head);
    text.lines().next().unwrap_or_default().to_string()
}

type Headers = Vec<(String, String)>;

fn parse_request_head(head: &[u8]) -> std::io::Result<(String, String, Headers)> {
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut storage);
    request.parse(head).map_err(std::io::Error::other)?;
    let method = request.method.unwrap_or_default().to_string();
    let target = request.path.unwrap_or_default().to_string();
    Ok((method, target, owned(request.headers)))
}

fn owned(headers: &[httparse::Header]) -> Headers {
    headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect()
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn take_header(headers: &mut Headers, name: &str) -> Option<String> {
    let i = headers.iter().position(|(k, _)| k.eq_ignore_ascii_case(name))?;
    Some(headers.remove(i).1)
}

fn build_head(first_line: &str, headers: &Headers) -> Vec<u8> {
    let mut head = format!("{first_line}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn read_answer(reader: &mut BufReader<TcpStream>, to_head: bool) -> std::io::Result<Message> {
    loop {
        let head = read_head(reader)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
        let mut storage = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut storage);
        answer.parse(&head).map_err(std::io::Error::other)?;
        let status = answer.code.unwrap_or(0);
        if status == 100 {
            continue;
        }
        let headers = owned(answer.headers);
        let no_body = to_head || status == 204 || status == 304;
        let body = if no_body { Vec::new() } else { read_body(reader, &headers, true)? };
        return Ok(Message { head, body });
    }
}

/// The body as it was framed (chunked bodies stay chunked). An answer without length runs to
/// the end of the connection.
fn read_body(reader: &mut impl BufRead, headers: &Headers, is_answer: bool) -> std::io::Result<Vec<u8>> {
    if header(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut raw = Vec::new();
        loop {
            let start = raw.len();
            reader.read_until(b'\n', &mut raw)?;
            let line = String::from_utf8_lossy(&raw[start..]).trim().to_string();
            let size =
                usize::from_str_radix(line.split(';').next().unwrap_or("0"), 16).map_err(std::io::Error::other)?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let at = raw.len();
                    if reader.read_until(b'\n', &mut raw)? == 0 || raw[at..] == *b"\r\n" {
                        return Ok(raw);
                    }
                }
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            raw.extend_from_slice(&chunk);
        }
    }
    match header(headers, "content-length") {
        Some(len) => {
            let len: usize = len.trim().parse().map_err(std::io::Error::other)?;
            let mut body = vec![0; len];
            reader.read_exact(&mut body)?;
            Ok(body)
        }
        None if is_answer => {
            let mut body = Vec::new();
            reader.read_to_end(&mut body)?;
            Ok(body)
        }
        None => Ok(Vec::new()),
    }
}
