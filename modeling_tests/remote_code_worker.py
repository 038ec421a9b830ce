"""
Run as a script, loads ConvLLaVA folders in a process where `convllava_hf` cannot be imported (an import blocker on
`sys.meta_path`), through transformers' remote code only, and records what they compute; test_remote_code.py runs
`run_folder` with the package for the reference. Usage: `python remote_code_worker.py SPEC_JSON OUT_DIR`, which writes
OUT_DIR/results.json and OUT_DIR/tensors.safetensors.
"""

import contextlib
import importlib.abc
import io
import json
import sys
import traceback
from pathlib import Path

import PIL.Image
import torch
import transformers
from safetensors.torch import save_file


class BlockConvLlavaHf(importlib.abc.MetaPathFinder):
    """Makes every `import convllava_hf...` fail, whatever else on sys.path or sys.meta_path could find it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] == "convllava_hf":
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked)", name=fullname)
        return None


AUTO_CLASSES = (
    "AutoConfig",
    "AutoModel",
    "AutoModelForImageTextToText",
    "AutoModelForMultimodalLM",
    "AutoProcessor",
    "AutoImageProcessor",
)


def package_is_importable() -> bool:
    try:
        import convllava_hf  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def run_folder(name: str, folder: str, spec: dict, tensors: dict, trust_remote_code: bool | None = True) -> dict:
    """Every Auto class and the pipeline on `folder`; their tensors go into `tensors`, the rest is returned."""
    loaded = {
        cls: getattr(transformers, cls).from_pretrained(folder, trust_remote_code=trust_remote_code)
        for cls in AUTO_CLASSES
    }
    image = PIL.Image.open(spec["image"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": spec["question"]}]}]
    processor, model = loaded["AutoProcessor"], loaded["AutoModelForImageTextToText"].eval()
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        tensors[f"{name}.pixel_values"] = inputs["pixel_values"].contiguous()
        image_processor_output = loaded["AutoImageProcessor"](image, return_tensors="pt")
        tensors[f"{name}.image_processor_pixel_values"] = image_processor_output["pixel_values"].contiguous()
        tensors[f"{name}.logits"] = model(**inputs).logits.contiguous()
        multimodal_lm, base_model = loaded["AutoModelForMultimodalLM"].eval(), loaded["AutoModel"].eval()
        tensors[f"{name}.multimodal_lm_logits"] = multimodal_lm(**inputs).logits.contiguous()
        tensors[f"{name}.base_model_hidden"] = base_model(**inputs).last_hidden_state.contiguous()
        generated = model.generate(**inputs, max_new_tokens=spec["max_new_tokens"], do_sample=False)
    pipe = transformers.pipeline("image-text-to-text", model=folder, trust_remote_code=trust_remote_code)
    chat = [{"role": "user", "content": [{"type": "image", "image": image}, *messages[0]["content"][1:]]}]
    answer = pipe(text=chat, max_new_tokens=spec["max_new_tokens"], return_full_text=False)[0]["generated_text"]
    return {
        "classes": {cls: f"{type(obj).__module__}.{type(obj).__name__}" for cls, obj in loaded.items()},
        "pipeline_model_class": f"{type(pipe.model).__module__}.{type(pipe.model).__name__}",
        "prompt": prompt,
        "input_ids": inputs["input_ids"].tolist(),
        "generated_ids": generated.tolist(),
        "pipeline_answer": answer,
    }


def resave(folder: str, destination: str) -> None:
    """`save_pretrained` of the model and processor of `folder`, loaded as remote code, into `destination`."""
    for auto_class in (transformers.AutoModelForImageTextToText, transformers.AutoProcessor):
        auto_class.from_pretrained(folder, trust_remote_code=True).save_pretrained(destination)


def run_load_case(case: dict) -> str:
    """`loaded module.Class` for one `from_pretrained`, or its error as `Type: message`."""
    kwargs = {"trust_remote_code": True} if case["trust_remote_code"] else {}
    try:
        loaded = getattr(transformers, case["auto_class"]).from_pretrained(case["folder"], **kwargs)
    except Exception as error:  # the test pins the type and the message
        return f"{type(error).__name__}: {error}"
    return f"loaded {type(loaded).__module__}.{type(loaded).__name__}"


def main() -> None:
    sys.meta_path.insert(0, BlockConvLlavaHf())
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(sys.argv[2])
    tensors: dict = {}
    results = {"package_importable": package_is_importable(), "folders": {}, "load_cases": {}}
    for name, folder in spec["folders"].items():
        try:
            if name == "resaved":  # save_pretrained of classes loaded as remote code, without the package
                resave(spec["folders"]["converted"], folder)
            results["folders"][name] = run_folder(name, folder, spec, tensors)
        except Exception:
            results["folders"][name] = {"failure": traceback.format_exc()}
    for case in spec["load_cases"]:
        results["load_cases"][case["name"]] = run_load_case(case)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(spec["snippet"], {})  # a model card's usage snippet, as a user would paste it
    results["snippet_output"] = printed.getvalue()
    results["loaded_convllava_hf_modules"] = sorted(m for m in sys.modules if m.partition(".")[0] == "convllava_hf")
    save_file(tensors, str(out_dir / "tensors.safetensors"))
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
