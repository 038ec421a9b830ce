"""
Run as a script, serves a ConvLLaVA folder with vLLM's Transformers backend through remote code only
(`trust_remote_code=True, model_impl="transformers"`), in a process where `convllava_hf` cannot be imported (an import
blocker on `sys.meta_path`) and no vLLM plugin is loaded, and writes each request's (prompt ids, greedy ids).
Usage: `python vllm_remote_code_worker.py SPEC_JSON OUT_JSON`; test_vllm.py writes the spec.
"""

import json
import os
import sys

from PIL import Image

from remote_code_worker import BlockConvLlavaHf, package_is_importable


def main(spec_file: str, out_file: str) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine runs in this process, under the blocker
    os.environ["VLLM_PLUGINS"] = "none"  # not even the entry point of an installed convllava-hf
    sys.meta_path.insert(0, BlockConvLlavaHf())
    assert not package_is_importable()
    import vllm

    spec = json.loads(open(spec_file).read())
    llm = vllm.LLM(model=spec["folder"], trust_remote_code=True, model_impl="transformers", **spec["engine_args"])
    requests = []
    for request in spec["requests"]:
        prompt = {"prompt": request["prompt"]}
        if request["images"]:
            prompt["multi_modal_data"] = {"image": [Image.open(path).convert("RGB") for path in request["images"]]}
            prompt["mm_processor_kwargs"] = {"image_aspect_ratio": request["mode"]}
        requests.append(prompt)
    outputs = llm.generate(requests, vllm.SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"]))
    results = [[list(output.prompt_token_ids), list(output.outputs[0].token_ids)] for output in outputs]
    with open(out_file, "w") as file:
        json.dump({"results": results, "model_config_architecture": llm.llm_engine.model_config.architecture}, file)


if __name__ == "__main__":
    main(*sys.argv[1:])
