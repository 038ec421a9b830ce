"""
Run as a script, lmms-eval's command line (`python -m lmms_eval ARGS...`) with `convllava_hf` blocked from import and
the one line a user needs for lmms-eval's built-in `llava_hf` model to load a stock `fast_vlm` folder: its model map,
keyed by `config.model_type`, lists only llava, llava_next and llava_onevision, so `fast_vlm` is added to it.
Usage: `python lmms_eval_llava_hf_launcher.py ARGS...`.
"""

import runpy
import sys

from remote_code_worker import BlockConvLlavaHf, package_is_importable


def main() -> None:
    sys.meta_path.insert(0, BlockConvLlavaHf())
    assert not package_is_importable()
    import transformers
    from lmms_eval.models.simple import llava_hf

    llava_hf.model_map["fast_vlm"] = transformers.FastVlmForConditionalGeneration
    sys.argv = ["lmms_eval", *sys.argv[1:]]
    runpy.run_module("lmms_eval", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
