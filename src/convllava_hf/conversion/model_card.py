"""README.md (Hub model card) of a converted ConvLLaVA checkpoint."""

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..configuration_conv_llava import ConvLlavaConfig, num_visual_tokens

BENCHMARK_SOURCE = "https://github.com/alibaba/conv-llava/blob/main/docs/Model_zoo.md"
GENERAL_BENCHMARKS = ("MME", "MMBench", "SEED", "RealWorldQA", "MMMU", "MM-Vet", "TextVQA", "DocVQA", "POPE")
GROUNDING_BENCHMARKS = (
    "RefCOCO val", "RefCOCO test-A", "RefCOCO test-B", "RefCOCO+ val", "RefCOCO+ test-A", "RefCOCO+ test-B",
    "RefCOCOg val", "RefCOCOg test", "Avg",
)  # fmt: skip

#: Published results of the ConvLLaVA-sft-<resolution> checkpoints (7B), from the authors' Model Zoo (BENCHMARK_SOURCE).
PUBLISHED_RESULTS = {
    768: (
        ("1541", "68", "68.8", "55.9", "36.3", "44.8", "59.1", "44.8", "87.3"),
        ("84.5", "89.0", "79.2", "77.7", "84.9", "69.7", "79.8", "79.7", "80.6"),
    ),
    1024: (
        ("1553", "68.8", "69.3", "58.8", "35.1", "44.4", "62.5", "48.5", "87.7"),
        ("85.5", "89.6", "78.8", "79.3", "86.1", "70.3", "80.6", "81.2", "81.4"),
    ),
    1536: (
        ("1575", "68.7", "70.2", "59.9", "35.8", "45.9", "65.8", "59", "87.3"),
        ("86.5", "90.6", "80.5", "80.0", "86.8", "71.5", "82.0", "82.4", "82.3"),
    ),
}

CITATION = """@article{ge2024convllava,
  title={ConvLLaVA: Hierarchical Backbones as Visual Encoder for Large Multimodal Models},
  author={Ge, Chunjiang and Cheng, Sijie and Wang, Ziming and Yuan, Jiale and Gao, Yuan and Song, Jun and
          Song, Shiji and Huang, Gao and Zheng, Bo},
  journal={arXiv preprint arXiv:2405.15738},
  year={2024}
}"""

#: Placeholders of the usage snippet (tests substitute them to run it).
MODEL_ID_PLACEHOLDER = "path/or/repo-id/of/this/model"
IMAGE_PLACEHOLDER = "example.jpg"


def _table(headers: tuple[str, ...], row: tuple[str, ...]) -> str:
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers), "| " + " | ".join(row) + " |"])


def benchmark_section(resolution: int, sources: list[str]) -> str:
    """The authors' published results for this resolution, or a clearly marked placeholder if there are none."""
    if resolution not in PUBLISHED_RESULTS:
        return (
            f"**No published results for {resolution}x{resolution} inputs.** The authors published numbers only for "
            f"the 768, 1024 and 1536 models ([Model Zoo]({BENCHMARK_SOURCE})); evaluate this model yourself."
        )
    general, grounding = PUBLISHED_RESULTS[resolution]
    caveat = (
        " This conversion was made from a pretrain (stage 2) checkpoint, for which no results were published."
        if any("pretrain" in source.lower() for source in sources)
        else " They describe this conversion only if it was made from that checkpoint."
    )
    return (
        f"Results published by the authors for ConvLLaVA-sft-{resolution} "
        f"(7B, {num_visual_tokens(resolution, resolution)} visual tokens), "
        f"from the [ConvLLaVA Model Zoo]({BENCHMARK_SOURCE}); not re-measured on this conversion.{caveat}\n\n"
        f"{_table(GENERAL_BENCHMARKS, general)}\n\n{_table(GROUNDING_BENCHMARKS, grounding)}"
    )


def usage_snippet(dtype: str, loader: str = "stock") -> str:
    """
    A copy-paste example: load, chat template, generate. `loader` is `"stock"` (plain transformers, a fast_vlm folder),
    `"package"` (`import convllava_hf`, either layout) or `"remote_code"` (`trust_remote_code=True`, a conv_llava
    folder).
    """
    package_import = (
        "\nimport convllava_hf  # registers ConvLLaVA with the Auto classes (pip install convllava-hf)\n"
        if loader == "package"
        else ""
    )
    remote_code = ", trust_remote_code=True" if loader == "remote_code" else ""
    backend = ', backend="pil"' if loader == "stock" else ""
    return f"""```python
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
{package_import}
model_id = "{MODEL_ID_PLACEHOLDER}"
processor = AutoProcessor.from_pretrained(model_id{remote_code}{backend})
model = AutoModelForImageTextToText.from_pretrained(
    model_id, dtype=torch.{dtype}, device_map="auto"{remote_code}
)

question = "What is shown in this image?"
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": question}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
image = Image.open("{IMAGE_PLACEHOLDER}")
inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device, model.dtype)
output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""


def package_snippet(dtype: str) -> str:
    """What the package adds on either layout: `preserve` mode (any aspect ratio) and mixed-size batches."""
    return f"""```python
import torch
from PIL import Image
from convllava_hf import ConvLlavaForConditionalGeneration, ConvLlavaProcessor

model_id = "{MODEL_ID_PLACEHOLDER}"
processor = ConvLlavaProcessor.from_pretrained(model_id)
model = ConvLlavaForConditionalGeneration.from_pretrained(model_id, dtype=torch.{dtype}, device_map="auto")

question = "What is shown in this image?"
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": question}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
images = [Image.open("{IMAGE_PLACEHOLDER}"), Image.open("{IMAGE_PLACEHOLDER}").rotate(90, expand=True)]
inputs = processor(
    images=[[image] for image in images], text=[prompt, prompt], image_aspect_ratio="preserve", padding=True,
    return_tensors="pt",
).to(model.device, model.dtype)
output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""


USAGE_HEADING = "## Usage\n"
NEXT_HEADING = "## Conversion details\n"


def usage_section(dtype: str, resolution: int, layout: str) -> str:
    """The card's `## Usage` section for a folder in `layout` (`"fast_vlm"` or `"conv_llava"`)."""
    if layout == "fast_vlm":
        loading = f"""This folder is in transformers' own `fast_vlm` layout (`FastVlmForConditionalGeneration` with a
`LlavaProcessor`): stock transformers loads it, with no extra package and no remote code, and so do the tools built
on it (`pipeline`, `transformers serve`, vLLM, TRL).

{usage_snippet(dtype)}

`backend="pil"` gives the original's pixels exactly. Without it, transformers picks LLaVA's torchvision image
processor wherever torchvision is installed, whose resizing differs from the original's PIL bicubic by up to 2 grey
levels. `pipeline("image-text-to-text", model=model_id)` works too; pass it
`processor=AutoProcessor.from_pretrained(model_id, backend="pil")` for the same pixels. The `convllava-hf` package
(`pip install convllava-hf`) loads the same folder with its own classes and adds `preserve` mode (any aspect ratio,
no padding to a square) and batches of images of different sizes:

{package_snippet(dtype)}
"""
    else:
        loading = f"""This folder is in the `conv_llava` layout of the `convllava-hf` package
(`ConvLlavaForConditionalGeneration`). There are two ways to load it, with the same results. With the package
installed (`pip install convllava-hf`):

{usage_snippet(dtype, "package")}

Or without it: the folder carries its own code (the `*.py` files named in the `auto_map` of `config.json` and
`processor_config.json`), which transformers runs when you pass `trust_remote_code=True`; read those files first, as
for any remote code. `pipeline("image-text-to-text", model=model_id, trust_remote_code=True)` works too.

{usage_snippet(dtype, "remote_code")}

`convllava-convert-layout FOLDER OUTPUT --layout fast_vlm` rewrites it for stock transformers (no remote code).
"""
    return f"""{USAGE_HEADING}
{loading}
Each `<image>` (one per image entry of a message) becomes `(height / 64) * (width / 64)` image tokens; images are
padded to a square with the mean colour and resized to {resolution}x{resolution}, as in the original. Prompts follow
the original's Vicuna-v1 conversation template (`processor.apply_chat_template`).

"""


def replace_usage_section(card_path: Path, layout: str) -> None:
    """Rewrite the `## Usage` section of a converted folder's card (if it has one) for `layout`."""
    if not card_path.is_file():
        return
    card = card_path.read_text(encoding="utf-8")
    if USAGE_HEADING not in card or NEXT_HEADING not in card:
        return
    config = json.loads((card_path.parent / "config.json").read_text(encoding="utf-8"))
    dtype = str(config["text_config"].get("dtype") or config.get("dtype") or "float32").removeprefix("torch.")
    resolution = config.get("image_resolution") or config["convllava_layout"]["image_resolution"]
    head, rest = card.split(USAGE_HEADING, 1)
    tail = rest.split(NEXT_HEADING, 1)[1]
    card_path.write_text(head + usage_section(dtype, resolution, layout) + NEXT_HEADING + tail, encoding="utf-8")


def render_model_card(
    config: ConvLlavaConfig,
    sources: list[str],
    base_models: list[str],
    original_vocab_size: int,
    notes: list[str],
    layout: str = "fast_vlm",
) -> str:
    """
    The model card (a `huggingface_hub.ModelCard`, its metadata a `ModelCardData`): what was converted and how,
    usage, published results, license, citation.
    """
    resolution = config.image_resolution
    padded = config.text_config.vocab_size
    dtype = str(config.text_config.dtype).removeprefix("torch.")
    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license="llama2",
        base_model=list(base_models) or None,
        tags=["convllava", "llava", "convnext", "vision-language"],
    )
    notes_section = "".join(f"- {note}\n" for note in notes)
    body = f"""# ConvLLaVA-{resolution} for 🤗 Transformers

[ConvLLaVA](https://arxiv.org/abs/2405.15738) replaces LLaVA-1.5's ViT with a hierarchical five-stage ConvNeXt
(total stride 64), so a {resolution}x{resolution} image costs only {config.image_seq_length} visual tokens. This
folder is the original checkpoint ([alibaba/conv-llava](https://github.com/alibaba/conv-llava)) converted for
🤗 Transformers by the `convllava-hf` package ({dtype} safetensors).

Converted from: {", ".join(f"`{source}`" for source in sources)}.

{usage_section(dtype, resolution, layout)}## Conversion details

- Weights are unchanged apart from the dtype. Parameter names are the same in both layouts (`model.vision_tower.*`,
  `model.multi_modal_projector.linear_1/2.*`, `model.language_model.*`, `lm_head.*`); both hold the ConvNeXt's
  pooling `layernorm` as identity weights, which ConvLLaVA and FastVLM never apply.
- `<image>` was added to the tokenizer as id {config.image_token_index}. The input embeddings and `lm_head` were
  grown from {original_vocab_size} to {padded} rows (the next multiple of 64, like the llava-hf models); every new row
  (`<image>` and {padded - original_vocab_size - 1} padding rows) is the **mean of the original rows**. Each new
  token's logit is therefore the mean of the original logits, below the largest one, so greedy decoding never picks
  it; `<image>`'s input embedding is never used (image features replace it).
- Batched prompts are padded on the left (the original padded on the right for training).
{notes_section}
## Results

{benchmark_section(resolution, sources)}

## License

The released ConvLLaVA checkpoints are built on Vicuna-7B-v1.5 and state: "Llama 2 is licensed under the LLAMA 2
Community License, Copyright (c) Meta Platforms, Inc. All Rights Reserved." The ConvLLaVA project adds no constraints
of its own but asks users to comply with the licenses of the data and checkpoints it builds on (e.g. the OpenAI Terms
of Use for GPT-generated training data and the Llama 2 Community License). This conversion inherits those terms.

## Citation

```bibtex
{CITATION}
```
"""
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}"))
