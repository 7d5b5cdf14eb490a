//! The confidence tiers of `catalog::TIERS` are not chosen by hand: they follow from the
//! pooled held-out labels in `docs/audit-labels/*.tsv` by a fixed rule, and this test
//! recomputes them and fails when the catalog disagrees.
//!
//! The rule (docs/audit-precision.md, "Fifth measurement"):
//! - the labels counted are those whose finding the current rules still report (the
//!   `current` column, written by `tools/label-current.py` from a run on the labelled
//!   corpora), grouped by that rule id and the language;
//! - **high** only if there are at least [`MIN_HIGH_LABELS`] labels, the Wilson 95%
//!   lower bound of the precision is at least [`MIN_HIGH_LOWER_BOUND`] and the precision
//!   itself is at least [`MIN_HIGH_PRECISION`] (the two goals for the high tier, asked
//!   of every pair in it: a large pair at 60% would pass the bound alone and pull the tier
//!   under 70%);
//! - **low** if there are at least [`MIN_LOW_LABELS`] labels and the precision is under
//!   [`LOW_BELOW`], or the pair was dropped by an earlier measurement (`catalog::DROPPED`)
//!   and has fewer labels than that;
//! - **medium** otherwise (including every pair with few or no labels);
//! - **careful labels veto high**: a pair that has at least [`MIN_HIGH_LABELS`] still-reported
//!   labels in [`CAREFUL_FILES`] (a careful blind relabel that read functions and callers,
//!   docs/audit-precision.md "Fifteenth measurement") is high only if those labels pass the
//!   same high test too. The fast first labels and the careful reading split on interrupt
//!   handling (90% against 53% on the same 70 findings); the careful reading is the definition;
//! - **careful labels decide where there are enough of them**: a pair with at least
//!   [`MIN_CAREFUL_DECIDES`] still-reported careful labels gets its tier from those labels
//!   alone, by the same high and low tests, whatever the fast labels say (docs/audit-precision.md,
//!   "Twenty-fifth round (d)": the fast labels of four medium pairs said 55-72%, two careful
//!   readings of the same 140 findings 35% and 44%).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ftvm_audit::catalog::{self, Tier, RULES};
use ftvm_audit::lang::Lang;
use std::collections::BTreeMap;
use std::path::Path;

const MIN_HIGH_LABELS: u32 = 10;
const MIN_HIGH_LOWER_BOUND: f64 = 0.55;
const MIN_HIGH_PRECISION: f64 = 0.70;
/// Careful labels that decide a pair's tier alone (see the module comment).
const MIN_CAREFUL_DECIDES: u32 = 20;
const MIN_LOW_LABELS: u32 = 5;
const LOW_BELOW: f64 = 0.40;
/// Careful blind labels of random samples. The fifteenth measurement's (`-third`) relabel findings
/// that are already in `LABEL_FILES` with a first label, so they are not pooled again; the
/// sixteenth measurement's (`-careful`) are the only labels of their findings and are pooled too.
/// `tuning30-careful.tsv` relabels, blind, a seeded sample of medium pairs of the tuning corpora
/// (many of them with fast first labels), so it is not pooled again either.
const CAREFUL_FILES: &[&str] = &[
    "heldout15-third.tsv",
    "heldout16-third.tsv",
    "heldout17-careful.tsv",
    "heldout18-careful.tsv",
    "heldout19-careful.tsv",
    "tuning30-careful.tsv",
    "heldout20-careful.tsv",
    "heldout21-careful.tsv",
    "heldout22-careful.tsv",
    "heldout23-careful.tsv",
    "heldout24-careful.tsv",
    "heldout25-careful.tsv",
    "heldout26-careful.tsv",
    "heldout27-careful.tsv",
    "heldout28-careful.tsv",
    "heldout29-careful.tsv",
    "heldout30-careful.tsv",
    "heldout31-careful.tsv",
    "heldout32-careful.tsv",
    "heldout33-careful.tsv",
    "heldout34-careful.tsv",
];
const LABEL_FILES: &[&str] = &[
    "heldout.tsv",
    "heldout2.tsv",
    "heldout3.tsv",
    "heldout4.tsv",
    "tuning5.tsv",
    "heldout5.tsv",
    "tuning6.tsv",
    "heldout6.tsv",
    "tuning7.tsv",
    "heldout7.tsv",
    "tuning9.tsv",
    "heldout8.tsv",
    "heldout9.tsv",
    "tuning10.tsv",
    "heldout10.tsv",
    "tuning11.tsv",
    "tuning12.tsv",
    "heldout11.tsv",
    "heldout12.tsv",
    "tuning13.tsv",
    "tuning14.tsv",
    "tuning15.tsv",
    "tuning16.tsv",
    "tuning17.tsv",
    "heldout13.tsv",
    "heldout14.tsv",
    "tuning18.tsv",
    "tuning20.tsv",
    "heldout15.tsv",
    "heldout16.tsv",
    "tuning22.tsv",
    "tuning23.tsv",
    "tuning21.tsv",
    "tuning26.tsv",
    "tuning27.tsv",
    "tuning28.tsv",
    "tuning29.tsv",
    "heldout17.tsv",
    "heldout18.tsv",
    "heldout17-careful.tsv",
    "heldout18-careful.tsv",
    "heldout19-careful.tsv",
    "heldout20.tsv",
    "heldout21.tsv",
    "heldout20-careful.tsv",
    "heldout21-careful.tsv",
    "heldout22.tsv",
    "heldout23.tsv",
    "heldout22-careful.tsv",
    "heldout23-careful.tsv",
    "heldout24.tsv",
    "heldout25.tsv",
    "heldout26.tsv",
    "heldout24-careful.tsv",
    "heldout25-careful.tsv",
    "heldout26-careful.tsv",
    "heldout27.tsv",
    "heldout28.tsv",
    "heldout29.tsv",
    "heldout30.tsv",
    "heldout27-careful.tsv",
    "heldout28-careful.tsv",
    "heldout29-careful.tsv",
    "heldout30-careful.tsv",
    "heldout31.tsv",
    "heldout32.tsv",
    "heldout33.tsv",
    "heldout34.tsv",
    "heldout31-careful.tsv",
    "heldout32-careful.tsv",
    "heldout33-careful.tsv",
    "heldout34-careful.tsv",
];

/// Wilson 95% score interval lower bound of `k` successes in `n`.
fn wilson_lower(k: u32, n: u32) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let (k, n, z) = (f64::from(k), f64::from(n), 1.96_f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    centre - half
}

/// (rule, language) -> (true positives, labels), counting only labels still reported.
fn pooled() -> BTreeMap<(String, String), (u32, u32)> {
    count(LABEL_FILES)
}

/// The same count over the careful relabels.
fn careful() -> BTreeMap<(String, String), (u32, u32)> {
    count(CAREFUL_FILES)
}

fn count(files: &[&str]) -> BTreeMap<(String, String), (u32, u32)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/audit-labels");
    let mut out = BTreeMap::new();
    for name in files {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
        let col = |h: &str| header.iter().position(|c| *c == h).unwrap();
        let (lang_col, label_col, current_col) = (col("language"), col("label"), col("current"));
        for line in lines.filter(|l| !l.is_empty()) {
            let cells: Vec<&str> = line.split('\t').collect();
            let label = cells[label_col];
            assert!(
                label == "TP" || label == "FP",
                "{name}: bad label in {line}"
            );
            let current = cells[current_col];
            if current == "-" {
                continue;
            }
            assert!(
                catalog::rule(current).is_some(),
                "{name}: unknown rule {current}"
            );
            let e = out
                .entry((current.to_string(), cells[lang_col].to_string()))
                .or_insert((0, 0));
            e.0 += u32::from(label == "TP");
            e.1 += 1;
        }
    }
    out
}

/// Whether `k` of `n` labels pass the high test.
fn passes_high(k: u32, n: u32) -> bool {
    n >= MIN_HIGH_LABELS
        && wilson_lower(k, n) >= MIN_HIGH_LOWER_BOUND
        && f64::from(k) / f64::from(n) >= MIN_HIGH_PRECISION
}

fn derived(
    rule: &str,
    lang: Lang,
    counts: Option<(u32, u32)>,
    careful: Option<(u32, u32)>,
) -> Tier {
    let (k, n) = match careful {
        Some(c) if c.1 >= MIN_CAREFUL_DECIDES => c,
        _ => counts.unwrap_or((0, 0)),
    };
    let careful_veto =
        careful.is_some_and(|(ck, cn)| cn >= MIN_HIGH_LABELS && !passes_high(ck, cn));
    if passes_high(k, n) && !careful_veto {
        Tier::High
    } else if (n >= MIN_LOW_LABELS && f64::from(k) / f64::from(n) < LOW_BELOW)
        || (n < MIN_LOW_LABELS && catalog::dropped(rule, lang).is_some())
    {
        Tier::Low
    } else {
        Tier::Medium
    }
}

#[test]
fn wilson_lower_bound_matches_known_values() {
    // 25/30: 0.664; 22/41: 0.387; 9/10: 0.596; 8/8: 0.676.
    assert!((wilson_lower(25, 30) - 0.664).abs() < 0.001);
    assert!((wilson_lower(22, 41) - 0.387).abs() < 0.001);
    assert!((wilson_lower(9, 10) - 0.596).abs() < 0.001);
    assert!((wilson_lower(8, 8) - 0.676).abs() < 0.001);
    assert_eq!(wilson_lower(0, 0), 0.0);
}

#[test]
fn catalog_tiers_follow_from_the_pooled_labels() {
    let pooled = pooled();
    let careful = careful();
    assert!(
        pooled.values().map(|c| c.1).sum::<u32>() >= 150,
        "label files went missing"
    );
    let mut wrong = Vec::new();
    let mut table = String::new();
    for rule in RULES {
        for lang in Lang::ALL {
            let key = (rule.id.to_string(), lang.name().to_string());
            let counts = pooled.get(&key).copied();
            let careful = careful.get(&key).copied();
            let want = derived(rule.id, lang, counts, careful);
            let have = catalog::tier(rule.id, lang);
            if let Some((k, n)) = counts {
                let careful_note = careful
                    .map(|(ck, cn)| {
                        let decides = if cn >= MIN_CAREFUL_DECIDES {
                            ", decides"
                        } else {
                            ""
                        };
                        format!(
                            " (careful {ck}/{cn} lower {:.2}{decides})",
                            wilson_lower(ck, cn)
                        )
                    })
                    .unwrap_or_default();
                table.push_str(&format!(
                    "{:22} {:7} {k:3}/{n:<3} lower {:.2} -> {}{careful_note}\n",
                    rule.id,
                    lang.name(),
                    wilson_lower(k, n),
                    want.name()
                ));
            }
            if want != have {
                wrong.push(format!(
                    "{} {}: catalog says {}, labels {:?} say {}",
                    rule.id,
                    lang.name(),
                    have.name(),
                    counts,
                    want.name()
                ));
            }
        }
    }
    println!("{table}");
    assert!(
        wrong.is_empty(),
        "tiers disagree with the labels:\n{}",
        wrong.join("\n")
    );
}
