#!/usr/bin/env bash
# One prepared run of a few minutes on an NVIDIA GPU machine (sized for an H200) that has nvidia-smi and,
# optionally, PyTorch, but no Rust toolchain. Build the binaries where cargo is and carry them over:
#
#     cargo build --release --features cuda --example compare --example verify_reference
#     # carry target/release/examples/{compare,verify_reference}, scripts/, and ../shared (fixtures, hf, models)
#
#     bash scripts/gpu-check.sh [--bin DIR] [--shared DIR] [--out DIR] [--peak-tflops N] [--python PY]
#                               [--no-reference] [--verify-timeout S] [--compare-timeout S] [--reference-timeout S]
#
#   --bin DIR             the compare and verify_reference binaries (default target/release/examples)
#   --shared DIR          the shared folder: fixtures/, hf/ (the hub cache), models/ (default ../shared)
#   --out DIR             everything it writes (default gpu-check-out); an earlier compare-gpu there is resumed
#   --peak-tflops N       the GPU's dense bf16 peak for the utilisation (default 989, an H200 SXM)
#   --python PY           the Python with torch for the utilisation and the PyTorch reference (default python3)
#   --no-reference        skip scripts/reference_hf.py
#
# Steps, each timed and bounded by `timeout`, each logged to OUT/STEP.log, a failure recorded and the others
# still run: the GPU (nvidia-smi), verify_reference on every fixture under SHARED/fixtures with a meta.json,
# `compare --preset gpu` (BERT-base and DistilBERT with random weights at length 256, batch 64, bf16;
# Llama-3-8B-Instruct QLoRA with random weights at length 256), the model FLOP utilisation of each row from
# compare-gpu/report.json, and scripts/reference_hf.py --device cuda on the same rows when torch sees the GPU.
# OUT/summary.tsv lists step, exit status and seconds. Exit status: 0 if every step passed, 1 if any failed,
# 2 if there is no NVIDIA GPU (nothing run).
set -euo pipefail

BIN=target/release/examples
SHARED=../shared
OUT=gpu-check-out
PEAK_TFLOPS=989
PYTHON=python3
REFERENCE=1
VERIFY_TIMEOUT=300
COMPARE_TIMEOUT=1200
REFERENCE_TIMEOUT=900

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) BIN=$2; shift 2 ;;
        --shared) SHARED=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --peak-tflops) PEAK_TFLOPS=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --no-reference) REFERENCE=0; shift ;;
        --verify-timeout) VERIFY_TIMEOUT=$2; shift 2 ;;
        --compare-timeout) COMPARE_TIMEOUT=$2; shift 2 ;;
        --reference-timeout) REFERENCE_TIMEOUT=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
    esac
done

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
    echo "no NVIDIA GPU here (nvidia-smi missing or failing): nothing run" >&2
    exit 2
fi

SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SHARED=$(cd "$SHARED" && pwd)
export HF_HOME="$SHARED/hf" HF_HUB_OFFLINE=1
SUMMARY="$OUT/summary.tsv"
printf 'step\tstatus\tseconds\n' > "$SUMMARY"
FAILED=0

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND under `timeout`, its output on the console and in
# OUT/NAME.log; records its exit status (124: timed out) and wall time, and counts a failure.
step() {
    local name=$1 limit=$2 status start seconds
    shift 2
    echo "=== $name (at most ${limit} s): $*"
    start=$(date +%s.%N)
    set +e
    timeout --kill-after=30 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    status=${PIPESTATUS[0]}
    set -e
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\n' "$name" "$status" "$seconds" >> "$SUMMARY"
    if [[ $status -eq 0 ]]; then
        echo "=== $name: ok in ${seconds} s"
    else
        echo "=== $name: FAILED (exit status $status$([[ $status -eq 124 ]] && echo ', timed out')) after ${seconds} s"
        FAILED=$((FAILED + 1))
    fi
}

step gpu 60 nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv

for meta in "$SHARED"/fixtures/*/meta.json; do
    [[ -e $meta ]] || { echo "no fixtures under $SHARED/fixtures"; break; }
    fixture=$(dirname "$meta")
    step "verify-$(basename "$fixture")" "$VERIFY_TIMEOUT" "$BIN/verify_reference" "$fixture"
done

# A second run in the same OUT continues the comparison (rows finished earlier are kept).
if [[ -e $OUT/compare-gpu/plan.json ]]; then
    step compare-gpu "$COMPARE_TIMEOUT" "$BIN/compare" --resume "$OUT/compare-gpu" --shared "$SHARED"
else
    step compare-gpu "$COMPARE_TIMEOUT" "$BIN/compare" --preset gpu --out "$OUT/compare-gpu" --shared "$SHARED"
fi

step utilisation 60 "$PYTHON" - "$OUT/compare-gpu/report.json" "$PEAK_TFLOPS" << 'EOF'
"""Model FLOP utilisation per row: encoders 2 x parameters FLOP per token forward, 6 x training; LoRA
training about 4 x (the frozen base needs no weight gradients). Tokens exclude padding, so the numbers are
lower bounds of the hardware's work; inference also shown on padded tokens."""
import json, sys

path, peak = sys.argv[1], float(sys.argv[2]) * 1e12
with open(path) as f:
    report = json.load(f)
print(f"{'row':34s} {'params':>8s} {'train tok/s':>12s} {'train TFLOP/s':>13s} {'MFU':>6s} "
      f"{'infer tok/s':>12s} {'infer TFLOP/s':>13s} {'MFU':>6s} {'MFU padded':>10s}")
for row in report["rows"]:
    name = row["spec"]["name"]
    if row.get("status") != "finished":
        print(f"{name:34s} failed: {row.get('error', '?')[:200]}")
        continue
    params = row["parameters"]["value"]
    lora = row["spec"]["recipe"]["kind"] == "lora"
    train_tokens = row["train_samples_per_second"]["value"] * row["run"]["data"]["mean_train_tokens"]
    train_flops = (4 if lora else 6) * params * train_tokens
    inference = row["inference"]
    infer_tokens = row["inference_tokens_per_second"]["value"] or 0.0
    padded_tokens = inference["padded_tokens"] * inference["repeats"] / sum(inference["pass_seconds"])
    infer_flops = 2 * params * infer_tokens
    print(f"{name:34s} {params / 1e9:7.2f}B {train_tokens:12.0f} {train_flops / 1e12:13.2f} "
          f"{train_flops / peak:6.2%} {infer_tokens:12.0f} {infer_flops / 1e12:13.2f} {infer_flops / peak:6.2%} "
          f"{2 * params * padded_tokens / peak:10.2%}")
print(f"against {peak / 1e12:.0f} TFLOP/s dense bf16; precision {report['hardware'].get('precision')}, "
      f"backend {report['hardware'].get('backend')}, GPU {report['hardware'].get('gpu_name')}")
EOF

if [[ $REFERENCE -eq 0 ]]; then
    echo "=== reference: skipped (--no-reference)"
elif ! "$PYTHON" -c 'import torch, transformers, peft, pyarrow; assert torch.cuda.is_available()' 2> /dev/null; then
    echo "=== reference: skipped ($PYTHON lacks torch/transformers/peft/pyarrow or torch sees no GPU)"
else
    step reference-hf "$REFERENCE_TIMEOUT" "$PYTHON" "$SCRIPTS/reference_hf.py" "$OUT/compare-gpu/report.json" \
        --device cuda --out "$OUT/pytorch-gpu.json"
    if [[ -e $OUT/pytorch-gpu.json ]]; then
        echo "$BIN/compare --resume $OUT/compare-gpu --reference $OUT/pytorch-gpu.json puts PyTorch's numbers" \
            "beside polarity's"
    fi
fi

echo
column -t -s $'\t' "$SUMMARY" 2> /dev/null || cat "$SUMMARY"
echo "logs in $OUT"
if [[ $FAILED -gt 0 ]]; then
    echo "$FAILED step(s) failed"
    exit 1
fi
