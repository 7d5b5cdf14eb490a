//! End-to-end tests: test helpers, mocks, example and demo modules kept inside production
//! source trees are left out, and `--explain-skips` names the rule; production classes and
//! modules whose names only look alike are still audited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// A Java method that swallows an interrupt (lost-interrupt in any tier).
const JAVA_BODY: &str = "{\n    void pause() {\n        try {\n            Thread.sleep(100);\n        } catch (InterruptedException e) {\n            System.out.println(e);\n        }\n    }\n}\n";

const PY: &str = "import requests\n\n\ndef fetch(u):\n    r = requests.get(u)\n    return r.text\n";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn java(root: &Path, rel: &str) {
    let class = Path::new(rel).file_stem().unwrap().to_str().unwrap();
    write(
        root,
        rel,
        &format!("package a;\n\npublic class {class} {JAVA_BODY}"),
    );
}

fn run(root: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ftvm-audit"))
        .current_dir(root)
        .args([
            "--all",
            "--format",
            "json",
            "--explain-skips",
            "--fail-on",
            "0",
            ".",
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn reported(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

fn reason(v: &Value, path: &str) -> Option<String> {
    v["left_out"].as_array().and_then(|l| {
        l.iter()
            .find(|s| s["path"] == path)
            .map(|s| s["reason"].as_str().unwrap().to_string())
    })
}

#[test]
fn test_support_modules_and_files_are_left_out_with_the_rule_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let left = [
        (
            "x-test-api/src/main/java/a/Runner.java",
            "module `x-test-api/`",
        ),
        (
            "example-app/src/main/java/a/WebApp.java",
            "module `example-app/`",
        ),
        (
            "demo-server/src/main/java/a/Main.java",
            "module `demo-server/`",
        ),
        (
            "core/src/main/java/a/KafkaTestUtils.java",
            "`KafkaTestUtils.java`",
        ),
        ("core/src/main/java/a/MockBroker.java", "`MockBroker.java`"),
        (
            "core/src/main/java/a/TestingServer.java",
            "`TestingServer.java`",
        ),
    ];
    for (rel, _) in left {
        java(p, rel);
    }
    write(p, "pkg/testing.py", PY);
    write(p, "pkg/mock_client.py", PY);
    let documented = "core/src/main/java/a/VertexRunner.java";
    write(
        p,
        documented,
        &format!("package a;\n\n/**\n * A base class for running internal tests on a vertex.\n */\npublic class VertexRunner {JAVA_BODY}"),
    );
    let v = run(p);
    assert!(reason(&v, documented)
        .unwrap()
        .contains("documented as test support"));
    let found = reported(&v);
    for (rel, why) in left {
        assert!(!found.iter().any(|f| f == rel), "{rel} reported: {found:?}");
        let r = reason(&v, rel).unwrap_or_else(|| panic!("{rel} not explained: {v}"));
        assert!(r.contains(why), "{rel}: {r}");
    }
    for rel in ["pkg/testing.py", "pkg/mock_client.py"] {
        assert!(!found.iter().any(|f| f == rel), "{rel} reported");
        assert!(reason(&v, rel).unwrap().contains("test-support file"));
    }
}

#[test]
fn production_names_that_only_look_like_tests_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let kept = [
        "core/src/main/java/a/TestResultStore.java",
        "core/src/main/java/a/AbTestRouter.java",
        "attestation-service/src/main/java/a/Verifier.java",
        "sampler/src/main/java/a/Reservoir.java",
        "core/src/main/java/a/FakeObjectCache.java",
        "fake_dns/src/main/java/a/Server.java",
    ];
    for rel in kept {
        java(p, rel);
    }
    write(
        p,
        "compat/fake-getaddrinfo.c",
        "#include <unistd.h>\nvoid f(int fd) {\n    fsync(fd);\n}\n",
    );
    write(p, "pkg/stub_generator.py", PY);
    let probe = "core/src/main/java/a/Probe.java";
    write(
        p,
        probe,
        &format!("package a;\n\n/**\n * A utility for testing connectivity to the brokers.\n */\npublic class Probe {JAVA_BODY}"),
    );
    let v = run(p);
    assert!(reported(&v).iter().any(|f| f == probe));
    let found = reported(&v);
    for rel in kept
        .iter()
        .copied()
        .chain(["compat/fake-getaddrinfo.c", "pkg/stub_generator.py"])
    {
        assert!(
            found.iter().any(|f| f == rel),
            "{rel} not reported: {found:?}"
        );
        assert!(reason(&v, rel).is_none());
    }
}
