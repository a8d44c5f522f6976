//! A small HTTP/1.1 client for the tests of the local HTTP listeners (`/metrics`, the
//! dashboards): a request, its status and body, one server-sent event, and the Prometheus text
//! format parsed by a parser of its own (`prometheus-parse`), not by the code under test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long one request may take: a bound for a loaded CI machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: status code, headers (lower-case names) and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

/// `METHOD http://addr/path` with `headers`, `Connection: close`, read to the end.
pub fn request(method: &str, addr: &str, path: &str, headers: &[(&str, &str)]) -> HttpAnswer {
    let mut stream = connect(addr);
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("request sent");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("answer read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpAnswer {
        status,
        headers,
        body,
    }
}

pub fn get(addr: &str, path: &str) -> HttpAnswer {
    request("GET", addr, path, &[])
}

/// The first `data:` of the server-sent events at `path`.
pub fn first_event(addr: &str, path: &str) -> String {
    let mut stream = connect(addr);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request sent");
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line.expect("an event arrives in time");
        if let Some(data) = line.strip_prefix("data:") {
            return data.trim().to_owned();
        }
    }
    panic!("the event stream at {path} ended without an event")
}

/// The samples of a Prometheus text page.
pub fn metrics(addr: &str) -> Vec<prometheus_parse::Sample> {
    let answer = get(addr, "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let lines = answer.body.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|error| panic!("not Prometheus text ({error}):\n{}", answer.body))
        .samples
}

/// The value of metric `name` whose labels include all of `labels`, summed over the samples
/// that match (0 when none does).
pub fn metric(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => value,
            ref other => panic!("{name} is not a number: {other:?}"),
        })
        .sum()
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|error| panic!("connect {addr}: {error}"));
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("timeout set");
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .expect("timeout set");
    stream
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
