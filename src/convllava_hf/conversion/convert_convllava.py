"""`convllava-convert`: original ConvLLaVA checkpoint (LLM folder + vision folder) -> transformers-native folder."""

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from huggingface_hub import HfApi
from transformers.utils.hub import convert_file_size_to_int

from ..remote_code import add_remote_code
from .checkpoint_reader import CheckpointReader
from .config_conversion import check_llm_settings, convert_configs
from .errors import ConversionError
from .layouts import LAYOUTS, rewrite_as_fast_vlm
from .model_card import render_model_card
from .processor_building import build_generation_config, build_processor
from .safetensors_writer import write_safetensors
from .sources import check_sentencepiece_model, default_vision_source, resolve_source
from .staged_output import check_output, recover_interrupted_runs, staged_output
from .verify import verify_conversion
from .weight_plan import output_dtype, plan_weights

logger = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConversionError(f"Cannot read {path}: {error}") from error
    if not isinstance(content, dict):
        raise ConversionError(f"{path} must hold a JSON object, not a {type(content).__name__}.")
    return content


def _parse_shard_size(size: str | int) -> int:
    try:
        value = convert_file_size_to_int(size)
    except ValueError as error:
        raise ConversionError(f"--max-shard-size {size!r} is not a size like '5GB' or '500MB'.") from error
    if value <= 0:
        raise ConversionError(f"--max-shard-size must be positive, got {size!r}.")
    return value


def _is_hub_id(source: str) -> bool:
    return not Path(source).expanduser().exists() and source.count("/") == 1


def convert_checkpoint(
    llm: str,
    output: Path,
    vision: str | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    force: bool = False,
    base_models: Sequence[str] = (),
    verify: Callable[[Path], object] | None = None,
    layout: str = "fast_vlm",
) -> Path:
    """
    Convert an original ConvLLaVA checkpoint into `output` (written in a sibling temp folder and moved into place when
    complete). `llm` / `vision` are local folders or Hub ids; `vision` defaults to where the original looks (the
    LLM folder's `vision_tower/`, else the config's `mm_vision_tower`). `dtype` defaults to that of most LLM weights.
    `layout` `"fast_vlm"` (the default) writes a folder that stock transformers loads
    (`FastVlmForConditionalGeneration`, `LlavaProcessor`), or refuses naming a setting it cannot express;
    `"conv_llava"` writes this package's classes and module files (`auto_map`), so that folder also loads with
    `trust_remote_code=True`.
    Weights are read memory-mapped and written one tensor at a time, so memory stays far below the size of the model.
    `verify` (e.g. `verify_conversion`) runs on the
    complete folder before it is moved into place: if it raises, nothing is published.
    """
    output = Path(output)
    if layout not in LAYOUTS:
        raise ConversionError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    recover_interrupted_runs(output)
    check_output(output, force)
    shard_size = _parse_shard_size(max_shard_size)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    llm_dir = resolve_source(llm, "--llm")
    llm_config = _read_json(llm_dir / "config.json")
    check_llm_settings(llm_config, llm_dir / "config.json")
    check_sentencepiece_model(llm_dir)
    vision = vision or default_vision_source(llm_dir, llm_config)
    vision_dir = resolve_source(vision, "--vision")
    for source in (llm_dir, vision_dir):
        if output.resolve() == source.resolve() or output.resolve() in source.resolve().parents:
            raise ConversionError(f"--output {output} would replace the original checkpoint in {source}.")
    llm_weights = CheckpointReader.from_folder(llm_dir)
    vision_weights = CheckpointReader.from_folder(vision_dir)
    if "lm_head.weight" not in llm_weights.specs:
        raise ConversionError(f"The LLM checkpoint in {llm_dir} lacks lm_head.weight.")
    out_dtype = output_dtype(llm_weights, vision_weights, DTYPES[dtype] if dtype else None)

    conversion = convert_configs(
        llm_config,
        _read_json(vision_dir / "config.json"),
        _read_json(vision_dir / "preprocessor_config.json"),
        out_dtype,
    )
    for note in conversion.notes:
        logger.info(note)
    planned = plan_weights(conversion, llm_weights, vision_weights, out_dtype)
    processor = build_processor(llm_dir, vision_dir, conversion.image_processor_kwargs, conversion.original_vocab_size)
    generation_config = build_generation_config(llm_dir, processor)
    sources = [source if _is_hub_id(source) else Path(source).name for source in (llm, vision)]
    base_models = list(base_models) or [source for source in (llm, vision) if _is_hub_id(source)]
    card = render_model_card(
        conversion.config, sources, base_models, conversion.original_vocab_size, conversion.notes, layout
    )

    with staged_output(output, force, check=verify, size=sum(tensor.nbytes for tensor in planned)) as staging:
        logger.info("Writing %d tensors (%s) to %s", len(planned), out_dtype, output)
        write_safetensors(planned, staging, shard_size)
        llm_weights.close()
        vision_weights.close()
        conversion.config.save_pretrained(staging)
        generation_config.save_pretrained(staging)
        processor.save_pretrained(staging)
        add_remote_code(staging)  # the model's modules and auto_map: loads with trust_remote_code=True alone
        (staging / "README.md").write_text(card, encoding="utf-8")
        if layout == "fast_vlm":
            rewrite_as_fast_vlm(staging)
    return output


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload a converted folder to a (new or existing) Hub model repository; returns the commit URL."""
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    return str(
        api.upload_folder(
            folder_path=folder, repo_id=repo_id, commit_message="Add ConvLLaVA converted with convllava-hf"
        )
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="convllava-convert", description=__doc__)
    parser.add_argument(
        "--llm", required=True, help="Original LLM folder or Hub id (e.g. ConvLLaVA/ConvLLaVA-sft-1536)."
    )
    parser.add_argument(
        "--vision",
        help="Original ConvNeXt vision-tower folder or Hub id (e.g. ConvLLaVA/ConvLLaVA-ConvNeXt-1536). Default: the "
        "LLM folder's vision_tower/ if present, else the config's mm_vision_tower.",
    )
    parser.add_argument("--output", required=True, type=Path, help="Folder to write (must be empty or absent).")
    parser.add_argument("--dtype", choices=list(DTYPES), help="Output dtype. Default: the dtype of the LLM weights.")
    parser.add_argument("--max-shard-size", default="5GB", help="Largest safetensors shard (default 5GB).")
    parser.add_argument(
        "--safe-serialization",
        action="store_true",
        help="Accepted for compatibility with transformers' conversion scripts: weights are always safetensors.",
    )
    parser.add_argument("--force", action="store_true", help="Replace the contents of a non-empty --output.")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="Reload the result and run one forward pass before moving it into place (nothing is written if it fails).",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="fast_vlm",
        help="fast_vlm (default): transformers' own FastVLM + LlavaProcessor, loaded by stock transformers and every "
        "tool built on it, no package or remote code needed. conv_llava: this package's classes and module files.",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="Upload the result to this Hub model repository.")
    parser.add_argument(
        "--base-model",
        action="append",
        default=[],
        help="Hub id for the model card's base_model (repeatable). Default: --llm / --vision when they are Hub ids.",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for input the converter refuses)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def verify(staging: Path) -> None:
        try:
            summary = verify_conversion(staging)
        except ConversionError as error:
            raise ConversionError(f"--verify failed, so nothing was written to {args.output}: {error}") from error
        print("Verification forward pass: " + json.dumps(summary))

    try:
        output = convert_checkpoint(
            args.llm,
            args.output,
            args.vision,
            args.dtype,
            args.max_shard_size,
            args.force,
            args.base_model,
            verify=verify if args.verify else None,
            layout=args.layout,
        )
        print(f"Converted checkpoint written to {output}")
        if args.push_to_hub:
            print(f"Uploaded to {push_to_hub(output, args.push_to_hub)}")
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
