//! Test support, examples and demos kept inside production source trees: modules named
//! `parseq-test-api`, `rqueue-test-util`, `example-app`, `examples_old`, `unit_test_common`,
//! and files named `KafkaTestUtils.java`, `ParSeqUnitTestHelper.java`, `MockBroker.java`,
//! `testing.py`, `testutil.go`, `mock.go`. Their code runs in tests and
//! demonstrations, not in the shipped program: findings there are not production hazards.
//!
//! A library's own test kit shipped to its users (Twisted's `internet/testing.py`, a
//! `-test-api` module) counts as non-production too: it runs inside its users' tests.
//! A production class whose name merely contains `Test` (`TestResultStore`,
//! `AbTestRouter`) is kept: only `Test` followed by a helper word counts. `fake` is not a
//! test word here: it names production features too (shadowsocks' `fake_dns/` and
//! `fake_tun.rs`, minidns' `FakeALabel`, Xodus' no-op `FakeObjectCache`, C
//! `fake-getaddrinfo.c` compatibility code).

use crate::lang::Lang;

/// Words of a directory name (split at `-`, `_`, `.`) that mark a test, example or demo
/// module (`parseq-test-api`, `example-app`, `load_testing`, `databus2-event-producer-mock`).
const DIR_WORDS: &[&str] = &[
    "test",
    "tests",
    "testing",
    "testutil",
    "testutils",
    "testkit",
    "testlib",
    "testsuite",
    "testbed",
    "example",
    "examples",
    "demo",
    "demos",
    "sample",
    "samples",
    "mock",
    "mocks",
];

/// Java camel-case words that, right after `Test`/`Tests`/`Testing`, make a test-helper
/// class name (`KafkaTestUtils`, `ParSeqUnitTestHelper`, `EmbeddedTestServer`).
const JAVA_TEST_HELPER_WORDS: &[&str] = &[
    "Util",
    "Utils",
    "Helper",
    "Helpers",
    "Harness",
    "Support",
    "Kit",
    "Fixture",
    "Fixtures",
    "Server",
    "Cluster",
    "Base",
    "Case",
    "Env",
    "Environment",
];

/// Snake-case words that, right after `test`/`tests`/`testing`, make a test-helper module name
/// (Go, Python, Rust): the helper words of [`JAVA_TEST_HELPER_WORDS`] that cannot name a
/// production module, and `lib`/`common` (`valve_test_lib`, `dns_test_common`).
const SNAKE_TEST_HELPER_WORDS: &[&str] = &[
    "util", "utils", "helper", "helpers", "harness", "support", "kit", "fixture", "fixtures",
    "base", "lib", "common",
];

/// Whether a directory name (one path component) names a test, example or demo module by
/// one of its words.
pub fn is_test_support_dir(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l.split(['-', '_', '.']).any(|w| DIR_WORDS.contains(&w))
}

/// Why a file is test support by its name (`stem` without extension), or `None`.
pub fn test_support_file(stem: &str, lang: Lang) -> Option<&'static str> {
    match lang {
        Lang::Java => java_test_support(stem),
        Lang::C | Lang::Cpp => {
            let first = stem.split(['-', '_', '.']).next().unwrap_or("");
            let first = first.to_ascii_lowercase();
            matches!(first.as_str(), "mock" | "mocks").then_some("mock")
        }
        Lang::Go | Lang::Python | Lang::Rust => {
            let l = stem.to_ascii_lowercase();
            let words: Vec<&str> = l.split(['-', '_', '.']).collect();
            let first = words.first().copied().unwrap_or("");
            let last = words.last().copied().unwrap_or("");
            if matches!(first, "mock" | "mocks") || matches!(last, "mock" | "mocks") {
                return Some("mock");
            }
            matches!(
                l.as_str(),
                "testing" | "testutil" | "testutils" | "testhelper" | "testhelpers" | "testlib"
            )
            .then_some("test helpers")
            .or_else(|| (last == "testing").then_some("test helpers"))
            .or_else(|| {
                // `mininet_test_base`, `valve_test_lib`, `dns_test_common`, `proxy_test_util`:
                // `test` followed by a helper word, as Java's `KafkaTestUtils`.
                words
                    .windows(2)
                    .any(|w| {
                        matches!(w[0], "test" | "tests" | "testing")
                            && SNAKE_TEST_HELPER_WORDS.contains(&w[1])
                    })
                    .then_some("test helpers")
            })
        }
    }
}

/// A Java class named as a mock (`MockBroker`) or as a test helper
/// (`KafkaTestUtils`, `TestingServer`, `ParSeqUnitTestHelper`).
fn java_test_support(stem: &str) -> Option<&'static str> {
    let words = camel_words(stem);
    let first = words.first().copied().unwrap_or("");
    if first == "Mock" && words.len() > 1 {
        return Some("mock");
    }
    if first == "Testing" && words.len() > 1 {
        return Some("test helper");
    }
    words
        .windows(2)
        .any(|w| {
            matches!(w[0], "Test" | "Tests" | "Testing") && JAVA_TEST_HELPER_WORDS.contains(&w[1])
        })
        .then_some("test helper")
}

/// Camel-case words of an identifier (`ParSeqUnitTestHelper` -> Par, Seq, Unit, Test,
/// Helper; `HTTPTestServer` -> HTTP, Test, Server).
fn camel_words(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..b.len() {
        let split = (b[i].is_ascii_uppercase() && b[i - 1].is_ascii_lowercase())
            || (b[i].is_ascii_uppercase()
                && b[i - 1].is_ascii_uppercase()
                && b.get(i + 1).is_some_and(|c| c.is_ascii_lowercase()))
            || (b[i] == b'_' || b[i - 1] == b'_')
            || (b[i].is_ascii_digit() != b[i - 1].is_ascii_digit());
        if split {
            out.push(&s[start..i]);
            start = i;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out.retain(|w| *w != "_");
    out
}

/// Words that start a phrase naming tests as a class's users (`used for testing`, `for
/// running internal tests`, `used by Livy tests`).
const DOC_LEADS: &[&str] = &["for", "in", "by", "during"];

/// The phrase of a Java class's own javadoc (the comment right before the first type
/// declaration) that says the class is for tests: `should only be used for testing`,
/// `Used for testing purposes`, `Helper class for writing unit tests`, `for running
/// internal tests on a vertex`. `A utility for testing connectivity` (testing as a verb
/// with an object) or `ways of testing for capabilities` do not count.
pub fn java_test_only_doc(src: &str) -> Option<String> {
    let decl = first_type_declaration(src)?;
    let head = &src[..decl];
    let end = head.rfind("*/")?;
    // Only annotations and blank lines between the comment and the declaration.
    if head[end + 2..]
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('@'))
    {
        return None;
    }
    let start = head[..end].rfind("/**")?;
    let doc = head[start + 3..end].to_ascii_lowercase();
    // Words, with `.`/`,`/`;`/`:`/`(`/`)`/`<`/`!`/`?` as phrase boundaries ("").
    let mut toks: Vec<&str> = Vec::new();
    let mut w = 0;
    for (i, c) in doc.char_indices() {
        if !c.is_ascii_alphanumeric() {
            if w < i {
                toks.push(&doc[w..i]);
            }
            if ".,;:()<!?".contains(c) {
                toks.push("");
            }
            w = i + c.len_utf8();
        }
    }
    if w < doc.len() {
        toks.push(&doc[w..]);
    }
    for (i, t) in toks.iter().enumerate() {
        let next = toks.get(i + 1).copied().unwrap_or("");
        let ends = next.is_empty() || matches!(next, "purposes" | "only" | "and" | "or");
        let hit = match *t {
            "tests" => true,
            "testing" => ends,
            "test" => matches!(next, "purposes" | "only"),
            _ => false,
        };
        if !hit {
            continue;
        }
        let lead = toks[i.saturating_sub(4)..i]
            .iter()
            .rposition(|x| x.is_empty() || DOC_LEADS.contains(x))
            .map(|k| toks[i.saturating_sub(4) + k]);
        if lead.is_some_and(|x| !x.is_empty()) || matches!(next, "purposes" | "only") {
            let from = i.saturating_sub(3);
            return Some(
                toks[from..=i + usize::from(!next.is_empty())]
                    .join(" ")
                    .trim()
                    .to_string(),
            );
        }
    }
    None
}

/// Byte offset of the line that declares the file's first type (`public class`, `final
/// class`, `interface`, `enum`, `record`, `@interface`), skipping comments.
fn first_type_declaration(src: &str) -> Option<usize> {
    let mut off = 0;
    for line in src.split_inclusive('\n') {
        let l = line.trim_start();
        let mut words = l.split_whitespace().skip_while(|w| {
            matches!(
                *w,
                "public" | "final" | "abstract" | "sealed" | "static" | "strictfp"
            )
        });
        if !l.starts_with('*') && !l.starts_with("//") {
            if let Some(w) = words.next() {
                if matches!(w, "class" | "interface" | "enum" | "record" | "@interface") {
                    return Some(off);
                }
            }
        }
        off += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_support_directories() {
        for d in [
            "parseq-test-api",
            "rqueue-test-util",
            "example-app",
            "examples_old",
            "unit_test_common",
            "load_testing",
            "databus2-event-producer-mock",
            "ta_update.test.integr",
            "demo-server",
        ] {
            assert!(is_test_support_dir(d), "{d}");
        }
        for d in [
            "parseq-core",
            "latest-release",
            "contest_api",
            "attestation",
            "sampler",
            "mockingbird",
            "fake_dns",
            "src",
        ] {
            assert!(!is_test_support_dir(d), "{d}");
        }
    }

    #[test]
    fn java_test_helper_classes() {
        for s in [
            "KafkaTestUtils",
            "ParSeqUnitTestHelper",
            "TestUtils",
            "TestingServer",
            "MockBroker",
            "EmbeddedTestCluster",
            "HTTPTestServer",
        ] {
            assert!(test_support_file(s, Lang::Java).is_some(), "{s}");
        }
        for s in [
            "TestResultStore",
            "AbTestRouter",
            "Mockito",
            "Mock",
            "Testing",
            "ContestServer",
            "LatestUtils",
            "InternalVertexRunner",
            "FakeALabel",
            "FakeObjectCache",
        ] {
            assert!(test_support_file(s, Lang::Java).is_none(), "{s}");
        }
    }

    #[test]
    fn other_language_test_helper_files() {
        assert!(test_support_file("testing", Lang::Python).is_some());
        assert!(test_support_file("cache_testing", Lang::Python).is_some());
        assert!(test_support_file("mock_udp_upstream_server", Lang::Go).is_some());
        assert!(test_support_file("testutil", Lang::Go).is_some());
        assert!(test_support_file("event_handler_mock", Lang::Go).is_some());
        assert!(test_support_file("testing", Lang::Rust).is_some());
        assert!(test_support_file("mock_server", Lang::C).is_some());
        for s in [
            "mininet_test_base",
            "valve_test_lib",
            "dns_test_common",
            "proxy_test_util",
            "testlib",
        ] {
            assert!(test_support_file(s, Lang::Python).is_some(), "{s}");
        }
        assert!(test_support_file("conn_test_helpers", Lang::Go).is_some());
        // A test word without a helper word after it, or a helper word without a test word.
        for s in [
            "speed_test",
            "test_server_main",
            "base_lib",
            "contest_util",
            "latest_base",
        ] {
            assert!(test_support_file(s, Lang::Python).is_none(), "{s}");
        }
        // Compatibility implementations, stub generators and plain names stay production.
        assert!(test_support_file("fake-getaddrinfo", Lang::C).is_none());
        assert!(test_support_file("fake_tun", Lang::Rust).is_none());
        assert!(test_support_file("fake_client", Lang::Python).is_none());
        assert!(test_support_file("stub_generator", Lang::Python).is_none());
        assert!(test_support_file("mockingbird", Lang::Go).is_none());
        assert!(test_support_file("attestation", Lang::Go).is_none());
        assert!(test_support_file("server", Lang::Rust).is_none());
    }
    #[test]
    fn java_class_docs_for_tests() {
        let doc = |d: &str| {
            format!("package a;\n\nimport b.C;\n\n/**\n * {d}\n */\n@Deprecated\npublic class K {{\n  /** for tests. */\n  int x;\n}}\n")
        };
        for d in [
            "Polling strategy using external input. This should only be used\n * for testing.",
            "An implementation which reads a resource file.\n * Used for testing purposes.",
            "A base class for running internal tests on a vertex",
            "Helper class for writing unit tests with EmbeddedKafka.",
            "Special class which is used to provide checkpoints for integration testing\n * <p>\n * It works by counting",
            "Utility methods used by Livy tests.",
        ] {
            assert!(java_test_only_doc(&doc(d)).is_some(), "{d}");
        }
        for d in [
            "A utility for testing connectivity to the brokers.",
            "Called a strategy because we might have different ways of testing for capabilities",
            "A checker at runtime. Predicate tests for Graal substitutions should not use this class",
            "Replicates the log to the followers.",
        ] {
            assert!(java_test_only_doc(&doc(d)).is_none(), "{d}");
        }
        // Only the class's own javadoc: a member's comment or a licence header does not count.
        let member = "package a;\npublic class K {\n  /** Used for testing. */\n  void f() {}\n}\n";
        assert!(java_test_only_doc(member).is_none());
        let licence = "/** Licensed for testing and production. */\npackage a;\n\nimport b.C;\n\npublic class K {}\n";
        assert!(java_test_only_doc(licence).is_none());
    }
}
