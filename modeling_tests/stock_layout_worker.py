"""
Run as a script, loads a stock-layout (`fast_vlm`) ConvLLaVA folder with plain transformers in a process where
`convllava_hf` cannot be imported, and records what it computes on the fixture's cases; test_stock_layout.py compares
that with the original's reference. Usage: `python stock_layout_worker.py SPEC_JSON OUT_DIR`, which writes
OUT_DIR/results.json and OUT_DIR/tensors.safetensors.
"""

import contextlib
import io
import json
import sys
from pathlib import Path

import PIL.Image
import torch
import transformers
from safetensors.torch import save_file

from remote_code_worker import BlockConvLlavaHf, package_is_importable


def run_case(case: dict, spec: dict, processor, model, pipe, tensors: dict) -> dict:
    """Prompt, ids, pixels, logits and greedy ids of one case through the Auto classes, and the pipeline's answer."""
    name = case["name"]
    image = PIL.Image.open(Path(spec["images"]) / case["image"]) if case.get("image") else None
    content = [{"type": "image"}] if image else []
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": case["question"]}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        tensors[f"{name}.logits"] = model(**inputs).logits.contiguous()
        generated = model.generate(**inputs, max_new_tokens=spec["max_new_tokens"], do_sample=False)
    if image is not None:
        tensors[f"{name}.pixel_values"] = inputs["pixel_values"].contiguous()
    chat_content = [{"type": "image", "image": image}] if image else []
    chat = [{"role": "user", "content": [*chat_content, {"type": "text", "text": case["question"]}]}]
    answer = pipe(text=chat, max_new_tokens=spec["max_new_tokens"], return_full_text=False)[0]["generated_text"]
    return {
        "prompt": prompt,
        "input_ids": inputs["input_ids"][0].tolist(),
        "generated_ids": generated[0, inputs["input_ids"].shape[1] :].tolist(),
        "pipeline_answer": answer,
    }


def main() -> None:
    sys.meta_path.insert(0, BlockConvLlavaHf())
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(sys.argv[2])
    folder = spec["folder"]
    processor = transformers.AutoProcessor.from_pretrained(folder, backend="pil")
    model, loading_info = transformers.AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    model.eval()
    pipe = transformers.pipeline("image-text-to-text", model=folder, processor=processor)
    tensors: dict = {}
    cases = {case["name"]: run_case(case, spec, processor, model, pipe, tensors) for case in spec["cases"]}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(spec["snippet"], {})  # the model card's first snippet, as a user would paste it
    results = {
        "package_importable": package_is_importable(),
        "classes": [type(obj).__name__ for obj in (processor, processor.image_processor, model, pipe.model)],
        "loading_info": {kind: sorted(names) for kind, names in loading_info.items()},
        "cases": cases,
        "snippet_output": printed.getvalue(),
        "loaded_convllava_hf_modules": sorted(m for m in sys.modules if m.partition(".")[0] == "convllava_hf"),
    }
    save_file(tensors, str(out_dir / "tensors.safetensors"))
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
