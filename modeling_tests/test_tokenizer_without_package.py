"""
`AutoTokenizer` on a converted folder in a process where `convllava_hf` cannot be imported and stdin is closed. A
folder in the default stock layout loads as it is. transformers' `AutoTokenizer` reads `config.json` first, and a
`conv_llava` folder's config is custom code, so there the README's way is `trust_remote_code=True`. Both are silent
(no prompt, no model-type warning), with the package's ids.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import convllava_hf  # noqa: F401  (registers the Auto classes)
from converted_tiny import convert_original_tiny

MODELING_TESTS = Path(__file__).resolve().parent
PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"
WORKER = f"""
import json, sys
sys.path.insert(0, {str(MODELING_TESTS)!r})
from remote_code_worker import BlockConvLlavaHf
sys.meta_path.insert(0, BlockConvLlavaHf())
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], **json.loads(sys.argv[3]))
print(json.dumps([type(tokenizer).__name__, tokenizer(sys.argv[2])["input_ids"]]))
"""


@pytest.fixture(scope="module", params=["fast_vlm", "conv_llava"])
def converted(request, tmp_path_factory) -> Path:
    return convert_original_tiny(tmp_path_factory.mktemp("converted") / "convllava-tiny", layout=request.param)


def test_auto_tokenizer_loads_silently_without_the_package(converted):
    """The stock layout needs nothing; the conv_llava layout needs `trust_remote_code=True`."""
    stock = json.loads((converted / "config.json").read_text())["model_type"] == "fast_vlm"
    kwargs = {} if stock else {"trust_remote_code": True}
    finished = subprocess.run(
        [sys.executable, "-c", WORKER, str(converted), PROMPT, json.dumps(kwargs)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stderr == ""  # no "[y/N]" prompt, no model-type warning
    class_name, ids = json.loads(finished.stdout)
    assert class_name == "TokenizersBackend"
    assert ids == AutoTokenizer.from_pretrained(converted)(PROMPT)["input_ids"]
