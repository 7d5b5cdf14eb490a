#!/usr/bin/env python3
"""Record, for each labelled finding, which rule the current ftvm-audit still reports there.

Usage: label-current.py LABELS.tsv RUN.json > LABELS.new.tsv

RUN.json is `ftvm-audit --all --format json --fail-on 0 *` run from the corpus directory the
labels' locations are relative to. The `current` column gets the rule id reported at the
same file within one line (the labelled rule first; a labelled empty or log-only Java
handler that is now reported as `lost-interrupt` counts as that, and a labelled Python
`no-timeout` on a `requests` call that is now `request-without-timeout` as that), or `-` when the current
rules no longer report it. tests/tiers.rs derives the tiers from this column.
"""
import json
import sys

SPLIT = {
    "log-only-handler": ["lost-interrupt"],
    "empty-handler": ["lost-interrupt"],
    "no-timeout": ["request-without-timeout"],
}

labels, run = sys.argv[1], sys.argv[2]
found = {}
for f in json.load(open(run))["findings"]:
    found.setdefault((f["path"], f["line"]), set()).add(f["rule"])

rows = open(labels).read().rstrip("\n").split("\n")
header = rows[0].split("\t")
if "current" in header:
    col = header.index("current")
else:
    header.append("current")
    col = None
print("\t".join(header))
for row in rows[1:]:
    cells = row.split("\t")
    rule, loc = cells[2], cells[4]
    path, line = loc.rsplit(":", 1)
    line = int(line)
    current = "-"
    for candidate in [rule] + SPLIT.get(rule, []):
        if any(candidate in found.get((path, line + d), ()) for d in (0, -1, 1)):
            current = candidate
            break
    if col is None:
        cells.append(current)
    else:
        cells[col] = current
    print("\t".join(cells))
