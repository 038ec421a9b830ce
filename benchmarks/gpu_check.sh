#!/usr/bin/env bash
# Benchmark 4 on one GPU (under 8 minutes on an H100): TTFT, decode tokens/s and peak memory of a 7B-shaped
# ConvLLaVA-1536 in bf16 and nf4 vs LLaVA-1.5 / LLaVA-NeXT shapes. Installs nothing: it runs this checkout's src/
# with the Python environment at hand, $PYTHON or python (torch, transformers, accelerate; bitsandbytes for 4-bit).
#
# Then vllm_check.py: requests/s and time to first token at 1536 px, vLLM vs this package's batched generate, with
# $VLLM_PYTHON (default: the same Python), skipped with a note where that Python has no vLLM.
#
#   bash benchmarks/gpu_check.sh OUTPUT_DIR            # -> OUTPUT_DIR/gpu_check.json, OUTPUT_DIR/vllm_check.json
#   bash benchmarks/gpu_check.sh OUTPUT_DIR --tiny     # CPU smoke test -> OUTPUT_DIR/gpu_check_tiny.json, ...
#
# Opt-in, after the benchmarks: a small POPE + MME slice of a converted checkpoint through lmms-eval, for an
# environment with `pip install -e ".[eval]"` and both datasets already in the Hugging Face cache (nothing is
# downloaded here) -> OUTPUT_DIR/lmms_eval/
#   CONVLLAVA_EVAL_CHECKPOINT=./ConvLLaVA-sft-1536-hf [CONVLLAVA_EVAL_LIMIT=200] bash benchmarks/gpu_check.sh OUTPUT_DIR
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUTPUT_DIR [--tiny] [--decode-tokens N] [--repeats N]" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
"${PYTHON:-python}" "$here/gpu_check.py" "$@"
vllm_python="${VLLM_PYTHON:-${PYTHON:-python}}"
if "$vllm_python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"; then
    "$vllm_python" "$here/vllm_check.py" "$@"
else
    echo "vllm_check.py skipped: vLLM is not installed for $vllm_python (set VLLM_PYTHON to a Python that has it)"
fi
[[ -z "${CONVLLAVA_EVAL_CHECKPOINT:-}" ]] && exit 0
exec bash "$here/lmms_eval_slice.sh" "$1" "$CONVLLAVA_EVAL_CHECKPOINT" "${CONVLLAVA_EVAL_LIMIT:-200}"
