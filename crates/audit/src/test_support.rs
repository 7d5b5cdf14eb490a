//! Test support, examples and demos kept inside production source trees: modules named
//! `parseq-test-api`, `rqueue-test-util`, `example-app`, `examples_old`, `unit_test_common`,
//! and files named `KafkaTestUtils.java`, `ParSeqUnitTestHelper.java`, `MockBroker.java`,
//! `testing.py`, `testutil.go`, `mock.go`, `fake_client.py`. Their code runs in tests and
//! demonstrations, not in the shipped program: findings there are not production hazards.
//!
//! A library's own test kit shipped to its users (Twisted's `internet/testing.py`, a
//! `-test-api` module) counts as non-production too: it runs inside its users' tests.
//! A production class whose name merely contains `Test` (`TestResultStore`,
//! `AbTestRouter`) is kept: only `Test` followed by a helper word counts.

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
    "fake",
    "fakes",
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
            // `fake-getaddrinfo.c` is a compatibility implementation: only mocks count.
            let first = stem.split(['-', '_', '.']).next().unwrap_or("");
            let first = first.to_ascii_lowercase();
            matches!(first.as_str(), "mock" | "mocks").then_some("mock")
        }
        Lang::Go | Lang::Python | Lang::Rust => {
            let l = stem.to_ascii_lowercase();
            let words: Vec<&str> = l.split(['-', '_', '.']).collect();
            let first = words.first().copied().unwrap_or("");
            let last = words.last().copied().unwrap_or("");
            if matches!(first, "mock" | "mocks" | "fake" | "fakes")
                || matches!(last, "mock" | "mocks" | "fake" | "fakes")
            {
                return Some("mock or fake");
            }
            matches!(
                l.as_str(),
                "testing" | "testutil" | "testutils" | "testhelper" | "testhelpers"
            )
            .then_some("test helpers")
            .or_else(|| (last == "testing").then_some("test helpers"))
        }
    }
}

/// A Java class named as a mock/fake (`MockBroker`, `FakeClock`) or as a test helper
/// (`KafkaTestUtils`, `TestingServer`, `ParSeqUnitTestHelper`).
fn java_test_support(stem: &str) -> Option<&'static str> {
    let words = camel_words(stem);
    let first = words.first().copied().unwrap_or("");
    if matches!(first, "Mock" | "Fake") && words.len() > 1 {
        return Some("mock or fake");
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
            "fakes",
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
            "FakeClock",
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
        ] {
            assert!(test_support_file(s, Lang::Java).is_none(), "{s}");
        }
    }

    #[test]
    fn other_language_test_helper_files() {
        assert!(test_support_file("testing", Lang::Python).is_some());
        assert!(test_support_file("cache_testing", Lang::Python).is_some());
        assert!(test_support_file("fake_client", Lang::Python).is_some());
        assert!(test_support_file("mock_udp_upstream_server", Lang::Go).is_some());
        assert!(test_support_file("testutil", Lang::Go).is_some());
        assert!(test_support_file("aws_fakes", Lang::Go).is_some());
        assert!(test_support_file("testing", Lang::Rust).is_some());
        assert!(test_support_file("mock_server", Lang::C).is_some());
        // Compatibility implementations, stub generators and plain names stay production.
        assert!(test_support_file("fake-getaddrinfo", Lang::C).is_none());
        assert!(test_support_file("stub_generator", Lang::Python).is_none());
        assert!(test_support_file("mockingbird", Lang::Go).is_none());
        assert!(test_support_file("attestation", Lang::Go).is_none());
        assert!(test_support_file("server", Lang::Rust).is_none());
    }
}
