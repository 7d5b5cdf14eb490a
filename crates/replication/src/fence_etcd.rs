//! A small etcd v3 client over etcd's JSON gateway (`/v3/...`), for fencing.
//!
//! etcd serves its v3 API as JSON over plain HTTP next to gRPC (the "gRPC gateway"): keys
//! and values are base64, 64-bit integers are strings. We use five calls: lease grant,
//! keep-alive (one request, one answer), revoke, transactions (compare, then puts), and a
//! range read. Every request goes to the first endpoint that answers; an etcd cluster
//! forwards writes to its leader itself.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// An etcd request failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered.
    #[error("no etcd endpoint answered ({0})")]
    Unreachable(String),
    /// An endpoint answered with something we cannot use.
    #[error("etcd {endpoint}{path}: {reason}")]
    Bad {
        /// The endpoint.
        endpoint: String,
        /// The API path.
        path: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// A key's current value and the lease it is attached to (0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The value.
    pub value: Vec<u8>,
    /// Its lease ID, 0 when it has none.
    pub lease: i64,
}

/// A comparison in a transaction.
#[derive(Debug, Clone, Copy)]
pub enum Cmp<'a> {
    /// The key does not exist (create revision 0).
    Absent(&'a str),
    /// The key exists with this value (a missing key never compares equal).
    Value(&'a str, &'a [u8]),
    /// The key is attached to this lease.
    Lease(&'a str, i64),
}

impl Cmp<'_> {
    fn json(self) -> Value {
        match self {
            Cmp::Absent(k) => {
                json!({"key": B64.encode(k), "result": "EQUAL", "target": "CREATE", "create_revision": "0"})
            }
            Cmp::Value(k, v) => {
                json!({"key": B64.encode(k), "result": "EQUAL", "target": "VALUE", "value": B64.encode(v)})
            }
            Cmp::Lease(k, l) => {
                json!({"key": B64.encode(k), "result": "EQUAL", "target": "LEASE", "lease": l.to_string()})
            }
        }
    }
}

/// A put in a transaction; `lease` 0 puts the key without a lease.
#[derive(Debug, Clone, Copy)]
pub struct Put<'a> {
    /// The key.
    pub key: &'a str,
    /// The value.
    pub value: &'a [u8],
    /// The lease to attach it to (0: none).
    pub lease: i64,
}

impl Put<'_> {
    fn json(self) -> Value {
        json!({"request_put": {"key": B64.encode(self.key), "value": B64.encode(self.value), "lease": self.lease.to_string()}})
    }
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// Every comparison held and the puts happened.
    pub succeeded: bool,
    /// The keys asked for, in order (`None`: absent).
    pub read: Vec<Option<KeyValue>>,
}

/// A client for a set of etcd endpoints (`http://HOST:PORT`).
#[derive(Debug, Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

impl Etcd {
    /// A client; each request gives up after `timeout`.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout(timeout)
            .build();
        Self { endpoints, agent }
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Whether every endpoint answers `GET /health` with `"health":"true"` (it is up and
    /// its cluster has a leader: it can serve the fence's requests).
    pub fn healthy(&self) -> bool {
        !self.endpoints.is_empty()
            && self.endpoints.iter().all(|ep| {
                let url = format!("{}/health", ep.trim_end_matches('/'));
                self.agent
                    .get(&url)
                    .call()
                    .ok()
                    .and_then(|r| r.into_string().ok())
                    .is_some_and(|body| body.contains("\"health\":\"true\""))
            })
    }

    fn post(&self, path: &'static str, body: &Value) -> Result<Value, EtcdError> {
        let mut errors = Vec::new();
        for ep in &self.endpoints {
            let url = format!("{}{path}", ep.trim_end_matches('/'));
            match self
                .agent
                .post(&url)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string())
            {
                Ok(resp) => {
                    let text = resp.into_string().map_err(|e| EtcdError::Bad {
                        endpoint: ep.clone(),
                        path,
                        reason: format!("reading the answer: {e}"),
                    })?;
                    // Streaming calls (keep-alive) answer one JSON object per line.
                    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                    let v: Value = serde_json::from_str(first).map_err(|e| EtcdError::Bad {
                        endpoint: ep.clone(),
                        path,
                        reason: format!("answer is not JSON ({e}): {first:.200}"),
                    })?;
                    if let Some(err) = v.get("error") {
                        return Err(EtcdError::Bad {
                            endpoint: ep.clone(),
                            path,
                            reason: format!("etcd reported an error: {err}"),
                        });
                    }
                    return Ok(v);
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    errors.push(format!("{ep}: HTTP {code}: {text:.200}"));
                }
                Err(e) => errors.push(format!("{ep}: {e}")),
            }
        }
        Err(EtcdError::Unreachable(errors.join("; ")))
    }

    /// Grant a lease of `ttl_s` seconds; returns (ID, granted TTL in seconds). etcd may
    /// raise a short TTL to its minimum.
    pub fn grant(&self, ttl_s: i64) -> Result<(i64, i64), EtcdError> {
        let v = self.post("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()}))?;
        let id = v.get("ID").and_then(int).unwrap_or(0);
        let ttl = v.get("TTL").and_then(int).unwrap_or(0);
        if id == 0 || ttl <= 0 {
            return Err(EtcdError::Bad {
                endpoint: self.endpoints.join(","),
                path: "/v3/lease/grant",
                reason: format!("no lease in the answer: {v}"),
            });
        }
        Ok((id, ttl))
    }

    /// Renew lease `id`; returns its remaining TTL in seconds, 0 when the lease no longer
    /// exists (expired or revoked).
    pub fn keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self.post("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        let r = v.get("result").unwrap_or(&v);
        Ok(r.get("TTL").and_then(int).unwrap_or(0))
    }

    /// Revoke lease `id` (its keys are deleted).
    pub fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.post("/v3/lease/revoke", &json!({"ID": id.to_string()}))?;
        Ok(())
    }

    /// Read `key`.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let v = self.post("/v3/kv/range", &json!({"key": B64.encode(key)}))?;
        Ok(first_kv(&v))
    }

    /// One transaction: if every comparison in `compare` holds, do the puts in
    /// `success`; either way read the keys in `read` (as they are after the puts).
    pub fn txn(
        &self,
        compare: &[Cmp<'_>],
        success: &[Put<'_>],
        read: &[&str],
    ) -> Result<Txn, EtcdError> {
        let compare: Vec<Value> = compare.iter().map(|c| c.json()).collect();
        let ranges: Vec<Value> = read
            .iter()
            .map(|k| json!({"request_range": {"key": B64.encode(k)}}))
            .collect();
        let mut ok: Vec<Value> = success.iter().map(|p| p.json()).collect();
        ok.extend(ranges.iter().cloned());
        let t = json!({"compare": compare, "success": ok, "failure": ranges});
        let v = self.post("/v3/kv/txn", &t)?;
        let succeeded = v.get("succeeded").and_then(Value::as_bool) == Some(true);
        let responses: Vec<Option<KeyValue>> = v
            .get("responses")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.get("response_range"))
                    .map(first_kv)
                    .collect()
            })
            .unwrap_or_default();
        let mut read_back = responses;
        read_back.resize(read.len(), None);
        Ok(Txn {
            succeeded,
            read: read_back,
        })
    }

    /// One transaction: if `key` is attached to `lease`, put `value` with no lease (it
    /// then outlives the lease). True when the put happened.
    pub fn put_unleased_if_lease(
        &self,
        key: &str,
        lease: i64,
        value: &[u8],
    ) -> Result<bool, EtcdError> {
        let k = B64.encode(key);
        let t = json!({"compare": [{"key": k, "result": "EQUAL", "target": "LEASE", "lease": lease.to_string()}], "success": [{"request_put": {"key": k, "value": B64.encode(value)}}]});
        let v = self.post("/v3/kv/txn", &t)?;
        Ok(v.get("succeeded").and_then(Value::as_bool) == Some(true))
    }
}

fn kv_of(kv: &Value) -> Option<KeyValue> {
    let value = kv
        .get("value")
        .and_then(Value::as_str)
        .map(|s| B64.decode(s).unwrap_or_default())
        .unwrap_or_default();
    let lease = kv.get("lease").and_then(int).unwrap_or(0);
    Some(KeyValue { value, lease })
}

fn first_kv(range: &Value) -> Option<KeyValue> {
    range.get("kvs")?.as_array()?.first().and_then(kv_of)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// An HTTP endpoint on loopback that answers one request with `status` and `body`.
    fn answer_once(status: &'static str, body: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
        url
    }

    fn client(url: String) -> Etcd {
        Etcd::new(vec![url], Duration::from_secs(5))
    }

    #[test]
    fn healthy_only_when_etcd_says_so() {
        assert!(client(answer_once("200 OK", r#"{"health":"true","reason":""}"#)).healthy());
        assert!(!client(answer_once("200 OK", r#"{"health":"false"}"#)).healthy());
        assert!(!client(answer_once(
            "503 Service Unavailable",
            r#"{"health":"false"}"#
        ))
        .healthy());
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        assert!(!client(url).healthy());
        assert!(!Etcd::new(Vec::new(), Duration::from_secs(1)).healthy());
    }
}
