//! The request side shared by the endpoint's routes (logs, exec, attach, port-forward): the
//! TLS stream type, the parsed request head, the plain-text response, the context every
//! route gets and how a route finds its pod. Routes depend on this module; the endpoint
//! dispatches to them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;

use crate::podstate::{PodRecord, find_pod};

#[derive(Clone)]
pub struct Ctx {
    pub token: String,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    /// The shim command (its `--reap` mode parents `exec -t` processes).
    pub shim: Vec<String>,
}

pub type Stream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// A parsed request head.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, comma-separated lists split (it may be repeated).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.q(name), Some("true" | "1"))
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Decodes a query or path component (`+` is a space in queries, as Go's and kubectl's
/// clients encode it).
pub fn percent_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parses a request head (`GET /p?q HTTP/1.1` + headers).
pub fn parse_head(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let (path, qs) = target.split_once('?').unwrap_or((target, ""));
    let query = qs
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
    })
}

pub(crate) fn read_head(s: &mut Stream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head too large"));
        }
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::other(
                "connection closed in the request head",
            ));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

pub fn respond(s: &mut impl Write, code: u16, reason: &str, body: &str) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

/// A pod's record with one container's (restart count, current id, has a previous run).
pub type Located = (PodRecord, u32, Option<String>, bool);
/// An HTTP error to send: (code, reason, body).
pub type HttpError = (u16, &'static str, String);

/// The pod's record and the named container's slot, or an HTTP error to send.
pub fn locate(ctx: &Ctx, ns: &str, pod: &str, container: &str) -> Result<Located, HttpError> {
    let rec = find_pod(&ctx.run_dir, ns, pod).ok_or_else(|| {
        (
            404,
            "Not Found",
            format!("pod {ns}/{pod} is not on this node\n"),
        )
    })?;
    let slot = rec.container(container).ok_or_else(|| {
        (
            400,
            "Bad Request",
            format!("container {container} is not valid for pod {pod}\n"),
        )
    })?;
    Ok((rec.clone(), slot.0, slot.1, slot.2))
}
