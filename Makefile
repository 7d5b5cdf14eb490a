# Fuzzing for ftvm-wire's decoders (see docs/protocol.md, "Fuzzing").
#
#   make fuzz                 run every cargo-fuzz target for FUZZ_SECONDS each
#   make fuzz FUZZ_SECONDS=600 FUZZ_TARGETS=frame_decode
#   make fuzz-regress         replay the checked-in corpus + stable mutation fuzzing
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer); RUSTC_BOOTSTRAP=1
# enables them on the stable toolchain. Install once: cargo install cargo-fuzz.
# New interesting inputs go to fuzz/corpus-work/ (not tracked); crashes to
# fuzz/artifacts/. Copy a crash into crates/wire/tests/corpus/<target>/ as
# crash-<name>.bin, fix it, then regenerate expected.txt (see tests/corpus.rs).

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= frame_decode frame_placing message_decode epoch_assembler snapshot_decode
CORPUS := $(CURDIR)/crates/wire/tests/corpus

.PHONY: fuzz fuzz-regress

fuzz:
	@set -e; cd fuzz; for t in $(FUZZ_TARGETS); do \
	  mkdir -p corpus-work/$$t; \
	  echo "== fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$t corpus-work/$$t $(CORPUS)/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	    -print_final_stats=1 2>&1 | tee corpus-work/$$t.log | grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|==[0-9]+==ERROR|SUMMARY)' || true; \
	  if ls artifacts/$$t/crash-* artifacts/$$t/oom-* artifacts/$$t/timeout-* >/dev/null 2>&1; then \
	    echo "!! $$t: findings in fuzz/artifacts/$$t"; exit 1; fi; \
	done

fuzz-regress:
	cargo test -p ftvm-wire --test corpus
