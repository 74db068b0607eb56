#!/usr/bin/env bash
# Nightly accuracy gate: dump an engine run in stats mode (index only: small and fast) and
# gate it with `dumpcmp gate` against the current baseline of a baseline store: one
# comparison, JSON + JUnit + HTML reports, reviewed waivers applied, the store's history
# appended, and (NIGHTLY_GATE_PROMOTE=1) tonight's run promoted when, and only when, it passed.
# Plain shell: run it from any CI (GitHub Actions: see nightly-gate.yml).
#
#   examples/ci/nightly_gate.sh STORE OUT_DIR -- ENGINE COMMAND...
#
#   STORE    a baseline store (seed it once: dumpcmp gate init STORE RUN; see docs/gate.md)
#   OUT_DIR  gets run/ (tonight's stats run), report.json, junit.xml, report.html, gate.json
#
# Settings (environment; not DUMPCMP_* names: `dumpcmp run` refuses DUMPCMP_* settings it does not know):
#   NIGHTLY_GATE_PATCH    patch file or preset (default: example/moe_engine)
#   NIGHTLY_GATE_WAIVERS  the engine repository's waivers file (dumpcmp gate accept writes it)
#   NIGHTLY_GATE_PROMOTE  1: promote tonight's run on a pass (keeping NIGHTLY_GATE_KEEP, default 7)
#   NIGHTLY_GATE_ARGS     extra `dumpcmp gate` options, e.g. "--thresholds gate.yaml --allow-skip logits"
#
# Exit code: 0 the gate passed; 1 a tensor diverged (or a waiver expired); 3 nothing was
# compared; 2 bad input (no baseline in the store, another model, ...); the engine's own
# code when the engine failed. Any non-zero code fails the CI job.
set -uo pipefail

if [ "$#" -lt 4 ] || [ "$3" != "--" ]; then
  echo "usage: $0 STORE OUT_DIR -- ENGINE COMMAND..." >&2
  exit 2
fi
store=$1
out=$2
shift 3
patch=${NIGHTLY_GATE_PATCH:-example/moe_engine}
read -r -a gate_args <<< "${NIGHTLY_GATE_ARGS:-}"
if [ -n "${NIGHTLY_GATE_WAIVERS:-}" ]; then
  if [ -f "$NIGHTLY_GATE_WAIVERS" ]; then
    gate_args+=(--waivers "$NIGHTLY_GATE_WAIVERS")
  else
    # No file yet (no change was ever accepted): nothing is waived, the gate is strict.
    echo "nightly gate: no waivers file at $NIGHTLY_GATE_WAIVERS; none applied"
  fi
fi
if [ "${NIGHTLY_GATE_PROMOTE:-0}" = "1" ]; then
  gate_args+=(--promote --keep "${NIGHTLY_GATE_KEEP:-7}")
fi

mkdir -p "$out"
rm -rf "$out/run"
echo "== dumping tonight's run (stats mode) into $out/run"
dumpcmp run --mode stats --patch "$patch" --dir "$out/run" -- "$@"
engine_code=$?
if [ "$engine_code" -ne 0 ]; then
  echo "nightly gate: the engine failed (exit code $engine_code); no comparison" >&2
  exit "$engine_code"
fi

echo "== gating against the current baseline of $store"
dumpcmp gate "$store" "$out/run" --output-dir "$out" --format json,junit,html "${gate_args[@]}"
code=$?

case "$code" in
  0) echo "nightly gate: PASS (reports: $out/junit.xml, $out/report.html)" ;;
  1) echo "nightly gate: FAIL: a tensor diverged or a waiver expired; open $out/report.html (first divergence on top)" >&2 ;;
  3) echo "nightly gate: FAIL: nothing was compared (do the dump points and steps match the baseline?)" >&2 ;;
  *) echo "nightly gate: FAIL: bad input (exit code $code)" >&2 ;;
esac
exit "$code"
