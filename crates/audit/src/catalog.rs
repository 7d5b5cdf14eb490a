//! The rule catalog: every rule's id, category, default severity, and the text that
//! explains why it hurts fault tolerance and how to fix it. `docs/audit-rules.md` is the
//! long form of this table (with sources and examples).

use crate::lang::Lang;
use serde::{Deserialize, Serialize};

/// The fault-tolerance concern a rule belongs to; findings are grouped by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    ErrorHandling,
    CrashProne,
    Waiting,
    Retrying,
    Durability,
    FailoverState,
}

impl Category {
    /// Human title used in the text report.
    pub fn title(self) -> &'static str {
        match self {
            Category::ErrorHandling => "error handling",
            Category::CrashProne => "crash-prone",
            Category::Waiting => "waiting",
            Category::Retrying => "retrying",
            Category::Durability => "durability",
            Category::FailoverState => "failover-hostile state",
        }
    }
}

/// How bad a finding is; `error` > `warning` > `note` (the SARIF levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Note,
    Warning,
    Error,
}

impl Severity {
    /// The lowercase name (also the SARIF `level`).
    pub fn name(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "note" => Ok(Severity::Note),
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            other => Err(format!(
                "unknown severity `{other}` (expected note, warning or error)"
            )),
        }
    }
}

/// How much a finding of a rule/language pair can be trusted, measured on the tuning corpus
/// (docs/audit-precision.md), the way CodeQL tags queries with a precision. The default
/// report shows the high tier; `--all` shows every tier.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Under 40% precision on at least 5 held-out labels, or dropped earlier: shown only with `--all`.
    Low,
    /// Neither high nor low, including every pair with few or no held-out labels.
    Medium,
    /// At least 10 held-out labels with a Wilson 95% lower bound of 55% or more.
    High,
}

impl Tier {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Medium => "medium",
            Tier::High => "high",
        }
    }
}

/// Rule/language pairs with a measured tier; pairs in [`DROPPED`] are low; every other
/// pair is medium. Derived mechanically from the pooled labels
/// (`docs/audit-labels/heldout{,2,..,14}.tsv`, `tuning{5,6,7,9,10,..,15}.tsv`, labels
/// whose finding the current rules still report): high needs >= 10 labels and a Wilson 95%
/// lower bound >= 55%; low is under 40% on >= 5 labels. `tests/tiers.rs` recomputes this
/// table from the label files and fails when it disagrees. Counts are "TP/labels". A careful
/// blind labelling (`heldout1{5,6}-third.tsv`, `heldout1{7,8,9}-careful.tsv`) with >= 10 labels
/// of a pair vetoes high when it fails the same test; with >= 20 careful labels they decide the
/// pair's tier. Python request-without-timeout is the one high pair: careful 388/495 = 78%
/// (lower bound 0.75) with the twenty-first measurement's 225 held-out careful labels (190/225 =
/// 84% held out); before them 182/252 = 72.2% in sample, since the thirty-second round's call
/// graph drops the waits only an operator's command or nothing reaches (src/reach.rs). Split from Python no-timeout in the
/// thirty-first round, it was high in sample then (careful 110/149) and measured 76/124 = 61%
/// held out (twentieth measurement); Python no-timeout had been high in sample twice (26/34,
/// 106/145) and measured 58% and 51% held out (eighteenth and nineteenth measurements).
/// Medium pairs with at least 5 labels: Java
/// lost-interrupt careful 104/178, C dropped-file-error 101/150, C rename-without-fsync 71/135,
/// Go write-in-place 71/153, Python no-timeout careful 70/124, Python rename-without-fsync
/// 51/119, Rust write-in-place 39/85, Go rename-without-fsync 23/45, Java write-in-place 22/44,
/// Rust rename-without-fsync 18/38, C++ rename-without-fsync careful 18/37, Go no-timeout
/// careful 25/35, C++ dropped-file-error 19/35, C++ write-in-place 14/31, Java rename-without-
/// fsync careful 11/20.
pub const TIERS: &[(&str, Lang, Tier)] = &[
    // Low: under 40% on at least 5 labels.
    (ASSERT, Lang::C, Tier::Low),                      // 0/55
    (ASSERT, Lang::Python, Tier::Low),                 // 0/8
    (ASSERT, Lang::Rust, Tier::Low),                   // 0/6
    (BROAD_CATCH, Lang::Cpp, Tier::Low),               // 1/40
    (BROAD_CATCH, Lang::Go, Tier::Low),                // 0/12
    (BROAD_CATCH, Lang::Java, Tier::Low),              // 5/78 (also dropped earlier)
    (BROAD_CATCH, Lang::Python, Tier::Low),            // 0/14
    (CATCH_AND_ABORT, Lang::Cpp, Tier::Low),           // 0/10 (Galera's fail-stop aborts)
    (CATCH_AND_ABORT, Lang::Go, Tier::Low),            // 1/14
    (CATCH_AND_ABORT, Lang::Python, Tier::Low),        // 0/7
    (DROPPED_FILE_ERROR, Lang::Go, Tier::Low),         // 56/152
    (DROPPED_FILE_ERROR, Lang::Java, Tier::Low),       // 6/19 (SharedPreferences commits)
    (DROPPED_FILE_ERROR, Lang::Rust, Tier::Low),       // 4/13
    (EMPTY_HANDLER, Lang::Cpp, Tier::Low),             // 0/16 (optional-parameter lookups)
    (EMPTY_HANDLER, Lang::Go, Tier::Low),              // 2/6
    (EMPTY_HANDLER, Lang::Java, Tier::Low),            // 1/17
    (EMPTY_HANDLER, Lang::Python, Tier::Low),          // 0/22
    (EMPTY_HANDLER, Lang::Rust, Tier::Low),            // 0/7
    (EXIT_IN_LIBRARY, Lang::Go, Tier::Low),            // 0/11
    (EXIT_IN_LIBRARY, Lang::Java, Tier::Low),          // 0/1
    (EXIT_IN_LIBRARY, Lang::Python, Tier::Low),        // 0/15
    (HARDCODED_HOST, Lang::C, Tier::Low),              // 0/17
    (HARDCODED_HOST, Lang::Cpp, Tier::Low),            // 0/17
    (HARDCODED_HOST, Lang::Go, Tier::Low),             // 0/7
    (HARDCODED_HOST, Lang::Java, Tier::Low),           // 0/5
    (HARDCODED_HOST, Lang::Python, Tier::Low),         // 1/10
    (HARDCODED_HOST, Lang::Rust, Tier::Low),           // 0/5
    (IGNORED_RESULT, Lang::C, Tier::Low),              // 6/92
    (IGNORED_RESULT, Lang::Cpp, Tier::Low),            // 2/60
    (IGNORED_RESULT, Lang::Go, Tier::Low),             // 2/66
    (IGNORED_RESULT, Lang::Java, Tier::Low),           // 5/45
    (IGNORED_RESULT, Lang::Python, Tier::Low),         // 2/17
    (IGNORED_RESULT, Lang::Rust, Tier::Low),           // 3/9
    (INTERRUPT_WRAPPED, Lang::Java, Tier::Low),        // careful 11/32
    (LOG_ONLY_HANDLER, Lang::Cpp, Tier::Low),          // 0/9
    (LOG_ONLY_HANDLER, Lang::Go, Tier::Low),           // 2/18
    (LOG_ONLY_HANDLER, Lang::Java, Tier::Low),         // 1/10 (interrupts are `lost-interrupt`)
    (LOG_ONLY_HANDLER, Lang::Python, Tier::Low),       // 1/16
    (LOG_ONLY_HANDLER, Lang::Rust, Tier::Low),         // 9/24
    (MEMORY_ONLY_STATE, Lang::Go, Tier::Low),          // 0/10
    (MEMORY_ONLY_STATE, Lang::Java, Tier::Low),        // 0/3
    (MEMORY_ONLY_STATE, Lang::Python, Tier::Low),      // 0/12
    (MEMORY_ONLY_STATE, Lang::Rust, Tier::Low),        // 0/5
    (NO_TIMEOUT, Lang::C, Tier::Low),                  // 0/16
    (NO_TIMEOUT, Lang::Cpp, Tier::Low),                // 0/5
    (NO_TIMEOUT, Lang::Java, Tier::Low),               // 2/9
    (NO_TIMEOUT, Lang::Rust, Tier::Low),               // 5/22
    (PANIC, Lang::Go, Tier::Low),                      // 23/73
    (PANIC, Lang::Rust, Tier::Low),                    // 1/16
    (PERSIST_FAILURE_LOGGED, Lang::Go, Tier::Low),     // 12/31
    (PERSIST_FAILURE_LOGGED, Lang::Java, Tier::Low),   // careful 4/21
    (PERSIST_FAILURE_LOGGED, Lang::Python, Tier::Low), // 11/34
    (RETRY_NO_BACKOFF, Lang::Cpp, Tier::Low),          // 0/8
    (RETRY_NO_BACKOFF, Lang::Go, Tier::Low),           // 0/6
    (RETRY_NO_BACKOFF, Lang::Java, Tier::Low),         // 0/6
    (RETRY_NO_BACKOFF, Lang::Python, Tier::Low),       // 0/8
    (RETRY_UNBOUNDED, Lang::Cpp, Tier::Low),           // 0/7
    (RETRY_UNBOUNDED, Lang::Go, Tier::Low),            // 1/3
    (RETRY_UNBOUNDED, Lang::Python, Tier::Low),        // 0/8
    (TODO_HANDLER, Lang::Go, Tier::Low),               // 0/6
    (TODO_HANDLER, Lang::Java, Tier::Low),             // 4/14
    (TODO_HANDLER, Lang::Python, Tier::Low),           // 0/10
    (TODO_HANDLER, Lang::Rust, Tier::Low),             // 1/8
    (UNWRAP, Lang::Rust, Tier::Low),                   // 19/223
    (WRITE_IN_PLACE, Lang::C, Tier::Low),              // 23/70
    (WRITE_IN_PLACE, Lang::Python, Tier::Low),         // 62/160
    // High: >= 70% and a Wilson lower bound >= 55% on >= 10 labels (careful labels decide).
    (REQUEST_WITHOUT_TIMEOUT, Lang::Python, Tier::High), // careful 388/495
];

/// The tier of a rule for a language.
pub fn tier(rule: &str, lang: Lang) -> Tier {
    if dropped(rule, lang).is_some() {
        return Tier::Low;
    }
    TIERS
        .iter()
        .find(|(r, l, _)| *r == rule && *l == lang)
        .map_or(Tier::Medium, |(_, _, t)| *t)
}

/// Static description of one rule.
#[derive(Debug, Clone, Copy)]
pub struct RuleInfo {
    pub id: &'static str,
    pub category: Category,
    pub severity: Severity,
    /// One line: what was found.
    pub title: &'static str,
    /// Why it hurts fault tolerance.
    pub why: &'static str,
    /// The refactoring that fixes it.
    pub fix: &'static str,
}

macro_rules! rules {
    ($($konst:ident = $id:literal, $cat:ident, $sev:ident, $title:literal, $why:literal, $fix:literal;)*) => {
        $(
            #[doc = $title]
            pub const $konst: &str = $id;
        )*
        /// Every rule, in catalog order.
        pub const RULES: &[RuleInfo] = &[
            $(RuleInfo { id: $id, category: Category::$cat, severity: Severity::$sev, title: $title, why: $why, fix: $fix },)*
        ];
    };
}

rules! {
    EMPTY_HANDLER = "empty-handler", ErrorHandling, Warning,
        "error handler is empty: the error is swallowed",
        "A swallowed error turns a recoverable fault into silent corruption or a later, harder failure; Yuan et al. (OSDI'14) found that trivial mistakes in error handlers (empty handlers among them) caused 92% of catastrophic failures in distributed systems.",
        "Handle the error (retry with backoff, fall back, clean up) or propagate it to a layer that can; if ignoring is truly right, name the variable `ignored`/`_` and say why in a comment.";
    TODO_HANDLER = "todo-handler", ErrorHandling, Warning,
        "error handler only contains a TODO/FIXME",
        "A handler that was left as a TODO swallows the error exactly like an empty one; Yuan et al. (OSDI'14) report handlers with TODO/FIXME comments among the causes of catastrophic failures.",
        "Write the missing handling now (propagate, retry, or fail the operation explicitly) and remove the TODO.";
    LOG_ONLY_HANDLER = "log-only-handler", ErrorHandling, Note,
        "error handler only logs and carries on",
        "Logging is not handling: the code after the handler runs as if the operation succeeded, with missing or partial results (Yuan et al., OSDI'14; Aspirator's 'abort/log-only' pattern).",
        "After logging, propagate the error, return a failure, or take a recovery action (retry, fallback, mark the component unhealthy).";
    PERSIST_FAILURE_LOGGED = "persist-failure-logged", ErrorHandling, Warning,
        "failure of a persistence step (save, commit, write to a store) is only logged",
        "A handler that only logs the failure of a save, commit, flush or store write lets the code go on (and often report success) although the state was not stored: after a restart or fail-over it is lost or stale (Yuan et al., OSDI'14: error handlers that only log caused most catastrophic failures of distributed data stores).",
        "Propagate the error (rethrow, return it), or retry and mark the component failed; only log when losing the write is a documented decision.";
    LOST_INTERRUPT = "lost-interrupt", ErrorHandling, Warning,
        "Java `InterruptedException` handler that only logs or is empty: the interrupt is lost",
        "Catching `InterruptedException` clears the thread's interrupt flag; a handler that only logs (or does nothing) and carries on makes a shutdown or cancellation request disappear, so threads that should stop keep running, joins and waits return early as if done, and executors hang on shutdown (Goetz, 'Java Concurrency in Practice' 7.1.3; Error Prone / SonarQube S2142).",
        "Restore the flag with `Thread.currentThread().interrupt()` and stop the operation (return, or rethrow as a checked error); or propagate `InterruptedException`.";
    INTERRUPT_WRAPPED = "interrupt-wrapped", ErrorHandling, Warning,
        "Java `InterruptedException` rethrown as another exception without restoring the interrupt flag",
        "Wrapping an interrupt in `RuntimeException`/`IOException` clears the thread's interrupt flag and hides it behind an ordinary failure: callers that catch the wrapper (retry loops, error logging, worker boundaries) carry on, and the shutdown or cancellation request is lost (Goetz, 'Java Concurrency in Practice' 7.1.3; SonarQube S2142).",
        "Call `Thread.currentThread().interrupt()` before throwing the wrapper, or throw `InterruptedIOException` / propagate `InterruptedException`.";
    BROAD_CATCH = "broad-catch", ErrorHandling, Warning,
        "over-broad catch (catch-all) without re-raising",
        "Catching everything (Exception/Throwable, bare `except:`, `catch (...)`, `recover()`) also swallows programming errors, interrupts and resource exhaustion, so a fault that should fail fast is converted into undefined behaviour (Yuan et al., OSDI'14; Error Prone, Pylint W0702/W0718).",
        "Catch the specific exceptions the protected code can raise and let the rest propagate; if a catch-all boundary is needed, re-raise or stop the component after recording the error.";
    CATCH_AND_ABORT = "catch-and-abort", ErrorHandling, Error,
        "handler of a recoverable error exits or aborts the process",
        "Aborting on a non-fatal error turns a local, recoverable fault into a whole-process outage (Yuan et al., OSDI'14: 'the error handling aborts the cluster').",
        "Return or raise the error to the caller and let the top level decide; only `main` should end the process.";
    IGNORED_RESULT = "ignored-result", ErrorHandling, Warning,
        "result that carries the only error signal is ignored",
        "When the return value (or Result/error) is the only way a failure is reported, ignoring it lets the program continue after a failed write, rename, setuid or lock (CERT ERR33-C, errcheck, Error Prone CheckReturnValue, clippy let_underscore_must_use).",
        "Check the result and handle or propagate the error; in C cast to `(void)` only with a comment saying why failure is harmless.";
    UNWRAP = "unwrap", CrashProne, Warning,
        "`unwrap()`/`expect()` on a non-test path",
        "`unwrap`/`expect` panic on the error case, turning a recoverable error (bad input, I/O failure) into a crash of the thread or process (clippy::unwrap_used; Cloudflare 2025-11-18 outage: an `unwrap()` on an oversized config file).",
        "Propagate with `?` and a typed error, or handle the `None`/`Err` case explicitly.";
    PANIC = "panic", CrashProne, Warning,
        "explicit panic/abort on a non-test path",
        "An explicit `panic!`, `todo!`, `panic()`, `abort()` or `log.Fatal` kills the process on a path that can be reached at run time, with no chance for the caller to recover (clippy::panic, gosec).",
        "Return an error to the caller; reserve panics for broken invariants that cannot be reached from input.";
    ASSERT = "assert", CrashProne, Note,
        "assertion on the result of an I/O, allocation, locking or input-parsing call",
        "An assertion on the result of a call that can fail for environmental reasons (I/O, allocation, locks, a Result/Option) turns that failure into a crash, or, when assertions are compiled out (NDEBUG, python -O), into no check at all and a call that silently disappears (CERT MSC11-C / PRE31-C, Bandit B101).",
        "Replace the assertion with an explicit check that returns or raises an error.";
    EXIT_IN_LIBRARY = "exit-in-library", CrashProne, Error,
        "process exit outside the program's entry point",
        "Library code that calls exit takes the decision away from the caller: no cleanup, no retry, no failover, and the whole process (and every other request it serves) goes down (CERT ERR04-C; Go `log.Fatal` in libraries).",
        "Return an error and let `main` decide the exit status.";
    NO_TIMEOUT = "no-timeout", Waiting, Warning,
        "blocking network/IPC call without a timeout",
        "A call that can block forever on a peer (connect, HTTP request, latch or lock wait) turns a slow or dead dependency into a hung caller: gray failures and cascading stalls (Huang et al., 'Gray Failure', HotOS'17; Bandit B113; gosec G107/G114).",
        "Pass an explicit timeout/deadline (connect_timeout, `timeout=`, `http.Client{Timeout: ...}`, `await(timeout, unit)`), and handle the timeout as an error.";
    REQUEST_WITHOUT_TIMEOUT = "request-without-timeout", Waiting, Warning,
        "Python `requests.get/post/..()` call without `timeout=`",
        "The `requests` library has no default timeout: a module-level call without `timeout=` waits forever for a server that accepted the connection and went silent, and the calling thread (a request handler, a worker, a startup step) hangs with it (Bandit B113 `request_without_timeout`; Pylint W3101 `missing-timeout`; Huang et al., 'Gray Failure', HotOS'17). Kept apart from `no-timeout` because the receiver is certain (the module itself, so no session or wrapper can add a default) and its precision is measured on its own.",
        "Pass `timeout=(connect_s, read_s)` and handle `requests.Timeout` as an error (retry with backoff, or fail the operation).";
    RETRY_UNBOUNDED = "retry-unbounded", Retrying, Error,
        "retry loop with no bound on attempts",
        "A retry loop that never gives up hides a permanent failure behind an endless loop and keeps load on a failing dependency (AWS Builders' Library, 'Timeouts, retries and backoff with jitter'; Google SRE book, ch. 22 'Addressing Cascading Failures').",
        "Bound the attempts (or total time) and surface the last error when the budget is spent.";
    RETRY_NO_BACKOFF = "retry-no-backoff", Retrying, Warning,
        "retry loop with no sleep/backoff between attempts",
        "Retrying immediately turns one failure into a tight loop and, across clients, into a retry storm that keeps the dependency down (AWS Builders' Library; Google SRE book, ch. 22).",
        "Sleep between attempts with exponential backoff and jitter (e.g. min(cap, base*2^n) * random).";
    RENAME_WITHOUT_FSYNC = "rename-without-fsync", Durability, Error,
        "file written then renamed without fsync",
        "write-then-rename is only atomic and durable if the data is fsync'd before the rename (and the directory after): otherwise a crash can leave an empty or partial file under the final name (Pillai et al., 'All File Systems Are Not Created Equal', OSDI'14; the ext4 zero-length-file reports of 2009).",
        "Write to a temp file in the same directory, fsync it (`sync_all`, `os.fsync`, `f.Sync()`, `FileChannel.force`), rename over the target, then fsync the directory.";
    WRITE_IN_PLACE = "write-in-place", Durability, Warning,
        "persistent state replaced in place (truncate then write)",
        "Truncating and rewriting the only copy of a state file means a crash in the middle leaves neither the old nor the new contents (Pillai et al., OSDI'14; Zheng et al., 'Torturing Databases for Fun and Profit', OSDI'14).",
        "Write the new contents to a temp file, fsync it, rename it over the old file, fsync the directory.";
    DROPPED_FILE_ERROR = "dropped-file-error", Durability, Warning,
        "error of a file Sync/Truncate/Close/Rename/ReadDir dropped (Go, typed; C fclose of a written stream, fsync; Rust sync_all/sync_data)",
        "`Sync`, `Truncate`, `Close` of a written `*os.File` and `os.Rename` report the only evidence that data did not reach the disk; dropping it lets the program acknowledge a write that a crash will lose (Rebello et al., 'Can Applications Recover from fsync Failures?', ATC'20; errcheck).",
        "Check the error and return it: `if err := f.Sync(); err != nil { return err }`; for a deferred Close of a written file, sync and close explicitly before returning.";
    HARDCODED_HOST = "hardcoded-host", FailoverState, Warning,
        "hard-coded IP address or internal host name",
        "A literal address pins the code to one machine: on failover the replacement has another address and the code keeps talking to the dead one (Twelve-Factor App, III 'Config'; Google SRE book, ch. 26).",
        "Read the address from configuration or service discovery (DNS name, env var, config file), so failover only changes configuration.";
    MEMORY_ONLY_STATE = "memory-only-state", FailoverState, Note,
        "function claims to persist state but only stores it in memory",
        "State that a `save`/`persist`/`store` function keeps only in a process-local map is lost on crash or failover, while callers believe it is durable (Twelve-Factor App, VI 'Processes': stateless processes, state in backing services).",
        "Write the state to durable or replicated storage (file with fsync+rename, database, replicated log) or rename the function so callers know it is a cache.";
}

/// Rule/language pairs that were measured on real code (docs/audit-precision.md) below 70%
/// precision and could not be fixed without guessing types or intent; they are not
/// reported. Each entry says why.
pub const DROPPED: &[(&str, Lang, &str)] = &[
    (
        EMPTY_HANDLER,
        Lang::Python,
        "2/13: Python code swallows probe and best-effort failures on purpose",
    ),
    (
        CATCH_AND_ABORT,
        Lang::Python,
        "0/2: sys.exit ends threads and child processes by design",
    ),
    (
        EXIT_IN_LIBRARY,
        Lang::Python,
        "0/4: sys.exit in process entry points (spawn, servers)",
    ),
    (
        BROAD_CATCH,
        Lang::Python,
        "5/21 even for bare except: after SystemExit re-raise guards, worker/UI boundaries and best-effort probes",
    ),
    (
        IGNORED_RESULT,
        Lang::Go,
        "5/13: without types, discarded errors were mostly impossible or irrelevant (Hostname, proxy copies)",
    ),
    (
        PANIC,
        Lang::Rust,
        "todo! 0/3 (doc scaffolding, deliberate stubs); panic!/abort in Err arms 4/20 earlier",
    ),
    (
        BROAD_CATCH,
        Lang::Java,
        "9/12 on ZooKeeper but 2/14 held out on Jetty/Tomcat: listener, JMX and cleanup boundaries",
    ),
    (
        CATCH_AND_ABORT,
        Lang::Java,
        "0/2 held out: launcher stop commands",
    ),
    (
        EXIT_IN_LIBRARY,
        Lang::Java,
        "0/3 held out: launcher and shutdown monitor exit on purpose",
    ),
    (
        NO_TIMEOUT,
        Lang::Java,
        "2/12 on Jetty/Tomcat: Future.get() after isDone(), loopback control sockets, local jar URLs",
    ),
    (
        MEMORY_ONLY_STATE,
        Lang::Java,
        "0/3 held out: JSP/JNDI state is in-memory by design",
    ),
    (
        RETRY_NO_BACKOFF,
        Lang::Java,
        "9/13 (8 TPs from one class); service loops under while(running) look alike",
    ),
    (
        RETRY_UNBOUNDED,
        Lang::Java,
        "0/1: second attempt after creating the parent node",
    ),
    (
        RETRY_NO_BACKOFF,
        Lang::Go,
        "2/6: loops were failovers and collision retries, not failing-dependency retries",
    ),
    (
        RETRY_UNBOUNDED,
        Lang::Go,
        "2/5: bounded by context or by the set of candidates",
    ),
];

/// Why a rule is not reported for a language, if it is dropped.
pub fn dropped(rule: &str, lang: Lang) -> Option<&'static str> {
    DROPPED
        .iter()
        .find(|(r, l, _)| *r == rule && *l == lang)
        .map(|(_, _, why)| *why)
}

/// Look a rule up by id.
pub fn rule(id: &str) -> Option<&'static RuleInfo> {
    RULES.iter().find(|r| r.id == id)
}

/// Whether a rule reports a wait without a timeout (`no-timeout`, or its Python `requests`
/// part, `request-without-timeout`): these share the timeout evidence (decision comments,
/// project-wide bounds, script places).
pub fn is_wait_without_timeout(id: &str) -> bool {
    id == NO_TIMEOUT || id == REQUEST_WITHOUT_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_unique_and_found() {
        for (i, r) in RULES.iter().enumerate() {
            assert!(
                RULES[i + 1..].iter().all(|o| o.id != r.id),
                "duplicate {}",
                r.id
            );
            assert_eq!(rule(r.id).map(|x| x.id), Some(r.id));
        }
        assert!(rule("nope").is_none());
    }
}
