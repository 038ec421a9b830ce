#!/usr/bin/env bash
# Benchmark 4 on one GPU (under 8 minutes on an H100): TTFT, decode tokens/s and peak memory of a 7B-shaped
# ConvLLaVA-1536 in bf16 and nf4 vs LLaVA-1.5 / LLaVA-NeXT shapes. Installs nothing: it runs this checkout's src/
# with the Python environment at hand, $PYTHON or python (torch, transformers, accelerate; bitsandbytes for 4-bit).
#
#   bash benchmarks/gpu_check.sh OUTPUT_DIR            # -> OUTPUT_DIR/gpu_check.json
#   bash benchmarks/gpu_check.sh OUTPUT_DIR --tiny     # CPU smoke test -> OUTPUT_DIR/gpu_check_tiny.json
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUTPUT_DIR [--tiny] [--decode-tokens N] [--repeats N]" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
