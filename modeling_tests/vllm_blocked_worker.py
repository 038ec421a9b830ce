"""
Run as a script, runs vLLM offline in a process where `convllava_hf` cannot be imported (an import blocker on
`sys.meta_path`) and no vLLM plugin is loaded, so a folder is served by stock vLLM alone (remote code, or a stock
layout), and writes each request's (prompt ids, greedy ids) and the architecture vLLM resolved.
Usage: `python vllm_blocked_worker.py SPEC_JSON OUT_JSON`; the spec holds `llm_args` (for `vllm.LLM`), `max_tokens`
and `requests` (prompt, image paths, optional `mode` for the package's `image_aspect_ratio`), generated in one call,
and with `one_at_a_time` also one call per request.
"""

import json
import os
import sys

from PIL import Image

from remote_code_worker import BlockConvLlavaHf, package_is_importable


def ids_of(output) -> list[list[int]]:
    return [list(output.prompt_token_ids), list(output.outputs[0].token_ids)]


def main(spec_file: str, out_file: str) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine runs in this process, under the blocker
    os.environ["VLLM_PLUGINS"] = "none"  # not even the entry point of an installed convllava-hf
    sys.meta_path.insert(0, BlockConvLlavaHf())
    assert not package_is_importable()
    import vllm

    spec = json.loads(open(spec_file).read())
    llm = vllm.LLM(**spec["llm_args"])
    requests = []
    for request in spec["requests"]:
        prompt = {"prompt": request["prompt"]}
        if request["images"]:
            prompt["multi_modal_data"] = {"image": [Image.open(path).convert("RGB") for path in request["images"]]}
        if request.get("mode"):
            prompt["mm_processor_kwargs"] = {"image_aspect_ratio": request["mode"]}
        requests.append(prompt)
    greedy = vllm.SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"])
    outputs = llm.generate(requests, greedy)
    alone = [llm.generate(request, greedy)[0] for request in requests] if spec.get("one_at_a_time") else []
    config = llm.llm_engine.model_config
    with open(out_file, "w") as file:
        json.dump({
            "results": [ids_of(output) for output in outputs],
            "results_one_at_a_time": [ids_of(output) for output in alone],
            "architecture": config.architecture,
            "hf_architectures": config.hf_config.architectures,
            "transformers_backend": config.using_transformers_backend(),
            "loaded_convllava_hf": any(m.partition(".")[0] == "convllava_hf" for m in sys.modules),
        }, file)  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:])
