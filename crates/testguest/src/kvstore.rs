//! The test guest's key-value store and its RESP2 commands (no_std + alloc; compiled into
//! the guest image and into this crate's library, where it is unit- and fuzz-tested).
//!
//! [`Store::execute`] runs one parsed request, appends the reply to an output buffer and
//! says whether the connection must be closed and what changed (a [`Mutation`], which the
//! guest appends to its disk log before the reply leaves, when it has a disk).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::resp;

/// Limits; a request over a limit gets an error reply and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key in bytes.
    pub max_key: usize,
    /// Longest value in bytes.
    pub max_value: usize,
    /// Most keys.
    pub max_keys: usize,
    /// Most bytes of keys and values together.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key: 512,
            max_value: 64 * 1024,
            max_keys: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// A change to the store, in the form it is logged and replayed (INCR is logged as the
/// SET of its result, so replay is idempotent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Key, value.
    Set(Vec<u8>, Vec<u8>),
    /// Keys to delete (only those that existed).
    Del(Vec<Vec<u8>>),
}

/// What [`Store::execute`] did besides appending the reply.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Close the connection once the reply is sent (QUIT).
    pub close: bool,
    /// The change made, if the store records mutations ([`Store::set_recording`]).
    pub mutation: Option<Mutation>,
}

/// Counters for INFO.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Requests executed (including failed ones).
    pub commands: u64,
    /// Connections accepted (maintained by the server).
    pub connections: u64,
    /// Connections open now (maintained by the server).
    pub clients: u64,
    /// Connections dropped because all buffers together were over budget.
    pub dropped: u64,
}

/// The store: keys and values in a B-tree, with limits.
#[derive(Debug, Default)]
pub struct Store {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
    limits: Limits,
    record: bool,
    /// Bytes the log can still take (`None`: no log, no limit).
    log_room: Option<u64>,
    /// Counters for INFO.
    pub stats: Stats,
}

impl Store {
    /// An empty store with these limits.
    pub fn new(limits: Limits) -> Self {
        Store {
            limits,
            ..Store::default()
        }
    }

    /// Whether [`Store::execute`] reports mutations (the guest has a log).
    pub fn set_recording(&mut self, on: bool) {
        self.record = on;
    }

    /// Bytes the log can still take: a mutation whose record (as sized by
    /// `crate::kvlog::record_len`) does not fit is refused with an error.
    pub fn set_log_room(&mut self, room: Option<u64>) {
        self.log_room = room;
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Keys and values in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.map.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Bytes of keys and values stored.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Applies a logged mutation (replay at boot): no limits, no reply.
    pub fn apply(&mut self, m: &Mutation) {
        match m {
            Mutation::Set(k, v) => self.put(k, v.clone()),
            Mutation::Del(keys) => {
                for k in keys {
                    self.remove(k);
                }
            }
        }
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        let add = value.len();
        match self.map.get_mut(key) {
            Some(old) => {
                self.bytes = self.bytes - old.len() + add;
                *old = value;
            }
            None => {
                self.bytes += key.len() + add;
                self.map.insert(key.to_vec(), value);
            }
        }
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key) {
            Some(v) => {
                self.bytes -= key.len() + v.len();
                true
            }
            None => false,
        }
    }

    /// Checks that storing `value` under `key` stays within the limits; the error reply.
    fn check_set(&self, key: &[u8], value_len: usize) -> Result<(), &'static str> {
        if key.len() > self.limits.max_key {
            return Err("ERR key too large");
        }
        if value_len > self.limits.max_value {
            return Err("ERR value too large");
        }
        let old = self.map.get(key);
        if old.is_none() && self.map.len() >= self.limits.max_keys {
            return Err("ERR too many keys");
        }
        let new_bytes = match old {
            Some(v) => self.bytes - v.len() + value_len,
            None => self.bytes + key.len() + value_len,
        };
        if new_bytes > self.limits.max_bytes {
            return Err("OOM command not allowed when used memory > 'maxmemory'");
        }
        if let Some(room) = self.log_room {
            if crate::kvlog::set_record_len(key.len(), value_len) as u64 > room {
                return Err("ERR disk log full");
            }
        }
        Ok(())
    }

    /// Runs one request (`args[0]` is the command name, any case), appends its reply.
    pub fn execute(&mut self, args: &[&[u8]], out: &mut Vec<u8>) -> Outcome {
        let mut outcome = Outcome::default();
        let Some((&name, rest)) = args.split_first() else {
            return outcome;
        };
        self.stats.commands += 1;
        let mut upper = [0u8; 16];
        let cmd = if name.len() <= upper.len() {
            for (u, &c) in upper.iter_mut().zip(name) {
                *u = c.to_ascii_uppercase();
            }
            &upper[..name.len()]
        } else {
            &b""[..]
        };
        let arity_ok = match cmd {
            b"PING" => rest.len() <= 1,
            b"ECHO" | b"GET" | b"INCR" => rest.len() == 1,
            b"SET" => rest.len() >= 2,
            b"DEL" | b"EXISTS" | b"CONFIG" => !rest.is_empty(),
            b"DBSIZE" | b"QUIT" => rest.is_empty(),
            b"INFO" => rest.len() <= 1,
            _ => {
                unknown_command(out, name);
                return outcome;
            }
        };
        if !arity_ok {
            let mut msg = Vec::new();
            msg.extend_from_slice(b"-ERR wrong number of arguments for '");
            msg.extend(cmd.iter().map(u8::to_ascii_lowercase));
            msg.extend_from_slice(b"' command\r\n");
            out.extend_from_slice(&msg);
            return outcome;
        }
        match cmd {
            b"PING" => match rest.first() {
                Some(m) => resp::bulk(out, m),
                None => resp::simple(out, "PONG"),
            },
            b"ECHO" => resp::bulk(out, rest[0]),
            b"GET" => match self.map.get(rest[0]) {
                Some(v) => resp::bulk(out, v),
                None => resp::nil(out),
            },
            b"SET" => {
                if rest.len() > 2 {
                    resp::error(out, "ERR syntax error");
                } else if let Err(e) = self.check_set(rest[0], rest[1].len()) {
                    resp::error(out, e);
                } else {
                    self.put(rest[0], rest[1].to_vec());
                    if self.record {
                        outcome.mutation = Some(Mutation::Set(rest[0].to_vec(), rest[1].to_vec()));
                    }
                    resp::simple(out, "OK");
                }
            }
            b"INCR" => self.incr(rest[0], out, &mut outcome),
            b"DEL" => {
                if let Some(room) = self.log_room {
                    let need = crate::kvlog::del_record_len(rest.iter().map(|k| k.len()));
                    if need as u64 > room {
                        resp::error(out, "ERR disk log full");
                        return outcome;
                    }
                }
                let mut deleted = Vec::new();
                for k in rest {
                    if self.remove(k) {
                        deleted.push(k.to_vec());
                    }
                }
                resp::integer(out, deleted.len() as i64);
                if self.record && !deleted.is_empty() {
                    outcome.mutation = Some(Mutation::Del(deleted));
                }
            }
            b"EXISTS" => {
                let n = rest.iter().filter(|k| self.map.contains_key(**k)).count();
                resp::integer(out, n as i64);
            }
            b"DBSIZE" => resp::integer(out, self.map.len() as i64),
            b"QUIT" => {
                resp::simple(out, "OK");
                outcome.close = true;
            }
            b"CONFIG" => {
                if rest[0].eq_ignore_ascii_case(b"GET") && rest.len() == 2 {
                    out.extend_from_slice(b"*0\r\n");
                } else if rest[0].eq_ignore_ascii_case(b"GET") {
                    resp::error(
                        out,
                        "ERR wrong number of arguments for 'config|get' command",
                    );
                } else {
                    resp::error(out, "ERR only CONFIG GET is supported");
                }
            }
            b"INFO" => self.info(out),
            _ => unknown_command(out, name),
        }
        if let (Some(m), Some(room)) = (&outcome.mutation, self.log_room.as_mut()) {
            *room = room.saturating_sub(crate::kvlog::record_len(m) as u64);
        }
        outcome
    }

    fn incr(&mut self, key: &[u8], out: &mut Vec<u8>, outcome: &mut Outcome) {
        let cur = match self.map.get(key) {
            Some(v) => match resp::parse_i64(v) {
                Some(n) => n,
                None => {
                    resp::error(out, "ERR value is not an integer or out of range");
                    return;
                }
            },
            None => 0,
        };
        let Some(next) = cur.checked_add(1) else {
            resp::error(out, "ERR increment or decrement would overflow");
            return;
        };
        let mut v = Vec::new();
        resp::push_int(&mut v, next);
        if let Err(e) = self.check_set(key, v.len()) {
            resp::error(out, e);
            return;
        }
        if self.record {
            outcome.mutation = Some(Mutation::Set(key.to_vec(), v.clone()));
        }
        self.put(key, v);
        resp::integer(out, next);
    }

    fn info(&self, out: &mut Vec<u8>) {
        let mut s = Vec::new();
        s.extend_from_slice(b"# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n");
        s.extend_from_slice(b"ftvm_testguest:1\r\n# Clients\r\nconnected_clients:");
        resp::push_int(&mut s, self.stats.clients as i64);
        s.extend_from_slice(b"\r\n# Memory\r\nused_memory:");
        resp::push_int(&mut s, self.bytes as i64);
        s.extend_from_slice(b"\r\n# Persistence\r\naof_enabled:");
        resp::push_int(&mut s, i64::from(self.record));
        s.extend_from_slice(b"\r\n# Stats\r\ntotal_connections_received:");
        resp::push_int(&mut s, self.stats.connections as i64);
        s.extend_from_slice(b"\r\ntotal_commands_processed:");
        resp::push_int(&mut s, self.stats.commands as i64);
        s.extend_from_slice(b"\r\nclient_query_buffer_limit_disconnections:");
        resp::push_int(&mut s, self.stats.dropped as i64);
        s.extend_from_slice(b"\r\n# Keyspace\r\n");
        if !self.map.is_empty() {
            s.extend_from_slice(b"db0:keys=");
            resp::push_int(&mut s, self.map.len() as i64);
            s.extend_from_slice(b",expires=0,avg_ttl=0\r\n");
        }
        resp::bulk(out, &s);
    }
}

/// `-ERR unknown command '<name>'` (the name cut to 128 bytes, CR/LF and quotes replaced).
fn unknown_command(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(b"-ERR unknown command '");
    out.extend(name.iter().take(128).map(|&c| match c {
        b'\r' | b'\n' | b'\'' => b' ',
        c => c,
    }));
    out.extend_from_slice(b"'\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(store: &mut Store, args: &[&str]) -> (Vec<u8>, Outcome) {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        let mut out = Vec::new();
        let o = store.execute(&a, &mut out);
        (out, o)
    }

    fn reply(store: &mut Store, args: &[&str]) -> String {
        String::from_utf8(run(store, args).0).unwrap()
    }

    #[test]
    fn commands() {
        let mut s = Store::new(Limits::default());
        assert_eq!(reply(&mut s, &["PING"]), "+PONG\r\n");
        assert_eq!(reply(&mut s, &["ping", "hi"]), "$2\r\nhi\r\n");
        assert_eq!(reply(&mut s, &["ECHO", "x y"]), "$3\r\nx y\r\n");
        assert_eq!(reply(&mut s, &["GET", "a"]), "$-1\r\n");
        assert_eq!(reply(&mut s, &["SET", "a", "1"]), "+OK\r\n");
        assert_eq!(reply(&mut s, &["get", "a"]), "$1\r\n1\r\n");
        assert_eq!(reply(&mut s, &["INCR", "a"]), ":2\r\n");
        assert_eq!(reply(&mut s, &["INCR", "n"]), ":1\r\n");
        assert_eq!(reply(&mut s, &["EXISTS", "a", "n", "zz", "a"]), ":3\r\n");
        assert_eq!(reply(&mut s, &["DBSIZE"]), ":2\r\n");
        assert_eq!(reply(&mut s, &["DEL", "a", "zz"]), ":1\r\n");
        assert_eq!(reply(&mut s, &["DBSIZE"]), ":1\r\n");
        assert_eq!(reply(&mut s, &["CONFIG", "GET", "save"]), "*0\r\n");
        assert!(reply(&mut s, &["INFO"]).contains("db0:keys=1,"));
        let (out, o) = run(&mut s, &["QUIT"]);
        assert_eq!(out, b"+OK\r\n");
        assert!(o.close);
    }

    #[test]
    fn errors() {
        let mut s = Store::new(Limits::default());
        assert_eq!(
            reply(&mut s, &["FLUSHALL"]),
            "-ERR unknown command 'FLUSHALL'\r\n"
        );
        assert_eq!(
            reply(&mut s, &["GET"]),
            "-ERR wrong number of arguments for 'get' command\r\n"
        );
        assert_eq!(
            reply(&mut s, &["SET", "a", "b", "EX", "1"]),
            "-ERR syntax error\r\n"
        );
        reply(&mut s, &["SET", "a", "x"]);
        assert_eq!(
            reply(&mut s, &["INCR", "a"]),
            "-ERR value is not an integer or out of range\r\n"
        );
        reply(&mut s, &["SET", "m", &i64::MAX.to_string()]);
        assert_eq!(
            reply(&mut s, &["INCR", "m"]),
            "-ERR increment or decrement would overflow\r\n"
        );
        assert_eq!(
            reply(&mut s, &["GET", "m"]),
            format!("$19\r\n{}\r\n", i64::MAX)
        );
        assert_eq!(
            reply(&mut s, &["bad\r\ncmd"]),
            "-ERR unknown command 'bad  cmd'\r\n"
        );
    }

    #[test]
    fn limits_are_errors_and_change_nothing() {
        let limits = Limits {
            max_key: 4,
            max_value: 8,
            max_keys: 2,
            max_bytes: 15,
        };
        let mut s = Store::new(limits);
        assert_eq!(
            reply(&mut s, &["SET", "12345", "v"]),
            "-ERR key too large\r\n"
        );
        assert_eq!(
            reply(&mut s, &["SET", "k", "123456789"]),
            "-ERR value too large\r\n"
        );
        assert_eq!(reply(&mut s, &["SET", "a", "12345678"]), "+OK\r\n");
        assert_eq!(reply(&mut s, &["SET", "b", "1"]), "+OK\r\n");
        assert_eq!(reply(&mut s, &["SET", "c", "1"]), "-ERR too many keys\r\n");
        assert!(reply(&mut s, &["SET", "b", "12345678"]).starts_with("-OOM"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(b"b"), Some(&b"1"[..]));
        assert_eq!(s.bytes(), 1 + 8 + 1 + 1);
    }

    #[test]
    fn mutations_are_recorded_and_replay_to_the_same_store() {
        let mut s = Store::new(Limits::default());
        s.set_recording(true);
        let mut log = Vec::new();
        for cmd in [
            &["SET", "a", "1"][..],
            &["INCR", "a"],
            &["INCR", "c"],
            &["DEL", "a", "nope"],
            &["DEL", "nope"],
            &["GET", "c"],
            &["SET", "b", "x"],
        ] {
            if let Some(m) = run(&mut s, cmd).1.mutation {
                log.push(m);
            }
        }
        assert_eq!(log.len(), 5);
        assert_eq!(log[1], Mutation::Set(b"a".to_vec(), b"2".to_vec()));
        let mut r = Store::new(Limits::default());
        for m in &log {
            r.apply(m);
        }
        assert_eq!(r.map, s.map);
        assert_eq!(r.bytes(), s.bytes());
    }

    #[test]
    fn log_room_refuses_writes_that_do_not_fit() {
        let mut s = Store::new(Limits::default());
        s.set_recording(true);
        s.set_log_room(Some(crate::kvlog::set_record_len(1, 3) as u64));
        assert_eq!(
            reply(&mut s, &["SET", "a", "1234"]),
            "-ERR disk log full\r\n"
        );
        assert_eq!(reply(&mut s, &["SET", "a", "123"]), "+OK\r\n");
        s.set_log_room(Some(0));
        assert_eq!(reply(&mut s, &["DEL", "a"]), "-ERR disk log full\r\n");
        assert_eq!(s.len(), 1);
    }
}
