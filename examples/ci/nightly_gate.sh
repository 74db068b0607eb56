#!/usr/bin/env bash
# Nightly accuracy gate: dump an engine run in stats mode (index only: small and fast),
# compare it with a stored baseline run, write JUnit and HTML reports, and fail on a
# divergence. Plain shell: run it from any CI (GitHub Actions: see nightly-gate.yml).
#
#   examples/ci/nightly_gate.sh BASELINE_RUN OUT_DIR -- ENGINE COMMAND...
#
#   BASELINE_RUN  a run of the same model and config, dumped earlier (stats or tensor mode)
#   OUT_DIR       gets run/ (tonight's stats run), junit.xml, report.html, report.json
#
# Settings (environment):
#   DUMPCMP_GATE_PATCH   patch file or preset (default: example/moe_engine)
#   DUMPCMP_GATE_ARGS    extra `dumpcmp compare` options, e.g. "--thresholds gate.yaml --allow-skip logits"
#
# Exit code: 0 the gate passed; 1 a tensor diverged; 3 nothing was compared; 2 bad input;
# the engine's own code when the engine failed. Any non-zero code fails the CI job.
set -uo pipefail

if [ "$#" -lt 4 ] || [ "$3" != "--" ]; then
  echo "usage: $0 BASELINE_RUN OUT_DIR -- ENGINE COMMAND..." >&2
  exit 2
fi
baseline=$1
out=$2
shift 3
patch=${DUMPCMP_GATE_PATCH:-example/moe_engine}
read -r -a gate_args <<< "${DUMPCMP_GATE_ARGS:-}"

mkdir -p "$out"
rm -rf "$out/run"
echo "== dumping tonight's run (stats mode) into $out/run"
dumpcmp run --mode stats --patch "$patch" --dir "$out/run" -- "$@"
engine_code=$?
if [ "$engine_code" -ne 0 ]; then
  echo "nightly gate: the engine failed (exit code $engine_code); no comparison" >&2
  exit "$engine_code"
fi

echo "== comparing with the baseline $baseline"
# NOTE: a stats-only comparison reads indexes only (seconds even for big models), so
# each report format is a run of its own; the JUnit run decides the verdict.
dumpcmp compare "$baseline" "$out/run" "${gate_args[@]}" --format junit --output "$out/junit.xml"
code=$?
dumpcmp compare "$baseline" "$out/run" "${gate_args[@]}" --format html --output "$out/report.html" >/dev/null 2>&1
dumpcmp compare "$baseline" "$out/run" "${gate_args[@]}" --format json --output "$out/report.json" >/dev/null 2>&1

case "$code" in
  0) echo "nightly gate: PASS (reports: $out/junit.xml, $out/report.html)" ;;
  1) echo "nightly gate: FAIL: a tensor diverged; open $out/report.html (first divergence on top)" >&2 ;;
  3) echo "nightly gate: FAIL: nothing was compared (do the dump points and steps match the baseline?)" >&2 ;;
  *) echo "nightly gate: FAIL: bad input (exit code $code)" >&2 ;;
esac
exit "$code"
