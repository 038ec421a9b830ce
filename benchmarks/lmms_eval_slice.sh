#!/usr/bin/env bash
# A small POPE + MME slice of a converted ConvLLaVA checkpoint through lmms-eval (the opt-in step of gpu_check.sh).
# Needs `pip install -e ".[eval]"` in the environment ($PYTHON or python) and both datasets already cached: it runs
# offline. lmms-eval exits 0 even when evaluation failed, so success is judged by the results file.
#
#   bash benchmarks/lmms_eval_slice.sh OUTPUT_DIR CHECKPOINT_DIR [LIMIT]   # -> OUTPUT_DIR/lmms_eval/
#
# Other tasks (the smoke test runs a tiny local one): CONVLLAVA_EVAL_TASKS=a,b [CONVLLAVA_EVAL_INCLUDE_PATH=DIR].
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 OUTPUT_DIR CHECKPOINT_DIR [LIMIT]" >&2
    exit 2
fi
output="$1/lmms_eval" checkpoint="$2" limit="${3:-200}"
python="${PYTHON:-python}"
if [[ ! -f "$checkpoint/config.json" ]]; then
    echo "lmms-eval slice: no converted checkpoint at '$checkpoint' (no config.json); write one with convllava-convert" >&2
    exit 1
fi
if ! "$python" -c "import sys, importlib.metadata as m; sys.exit(not any(e.name == 'convllava' for e in m.entry_points(group='lmms_eval.models')))"; then
    echo "lmms-eval slice: lmms-eval's 'convllava' model is not installed here; run: pip install -e \".[eval]\"" >&2
    exit 1
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$output"
start=$(date +%s)
include=()
[[ -n "${CONVLLAVA_EVAL_INCLUDE_PATH:-}" ]] && include=(--include_path "$CONVLLAVA_EVAL_INCLUDE_PATH")
"$python" -m lmms_eval --model convllava --model_args "pretrained=$checkpoint,dtype=bfloat16,batch_size=8" \
    --tasks "${CONVLLAVA_EVAL_TASKS:-pope,mme}" "${include[@]}" --limit "$limit" --log_samples --output_path "$output" \
    2>&1 | tee "$output/lmms_eval.log"
results=$(find "$output" -name "*_results.json" -newermt "@$start" | head -n 1)
if [[ -z "$results" ]]; then
    echo "lmms-eval slice: no results were written; see $output/lmms_eval.log" >&2
    exit 1
fi
echo "lmms-eval slice: $results"
