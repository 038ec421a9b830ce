"""Processor of ConvLLaVA: image processor + Llama tokenizer, on transformers' standard `ProcessorMixin` path."""

import itertools
import json
import os
import re
from pathlib import Path

from transformers import AddedToken, LlamaTokenizer
from transformers.processing_utils import MultiModalData, ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import logging

from .chat_template import VICUNA_V1_CHAT_TEMPLATE
from .configuration_conv_llava import num_visual_tokens
from .grounding import post_process_grounding
from .image_processing_conv_llava import ConvLlavaImageProcessor, auto_map_in_files_only
from .stock_layout import STOCK_PROCESSOR_CLASS, from_stock_processor
from .whole_prompt_tokenizer import original_exact_tokenizer

logger = logging.get_logger(__name__)


class ConvLlavaProcessor(ProcessorMixin):
    r"""
    Wraps a [`ConvLlavaImageProcessor`] and a Llama tokenizer that has an `<image>` special token, on transformers'
    standard processor path (structured kwargs, `return_text_replacement_offsets`, `return_mm_token_type_ids`,
    `apply_chat_template` with images, `return_assistant_tokens_mask`, truncation).

    Each `<image>` in the text stands for the next image and is replaced by the string `"<image>" * n`,
    `n = (h / 64) * (w / 64)` for that image's entry `(h, w)` in `image_sizes`; the whole text is then tokenised at
    once. The ids equal the original ConvLLaVA's: a sentencepiece-style Llama tokenizer (Vicuna's) is replaced by its
    whole-prompt copy, [`original_exact_tokenizer`], which `save_pretrained` then writes. Batches are padded on the
    tokenizer's padding side (left for processors built by [`from_original`]).

    Args:
        image_processor ([`ConvLlavaImageProcessor`]): the image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): a Llama tokenizer; `image_token` is added as a special token (the id
            after its vocabulary, e.g. 32000 for Vicuna) when it lacks one.
        chat_template (`str`, *optional*): Jinja chat template; defaults to Vicuna v1 (`VICUNA_V1_CHAT_TEMPLATE`).
        image_token (`str`, *optional*, defaults to `"<image>"`): the image placeholder.
    """

    def __init__(
        self,
        image_processor: ConvLlavaImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
    ):
        if image_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
            logger.info(f"Added {image_token!r} to the tokenizer as id {tokenizer.convert_tokens_to_ids(image_token)}.")
        tokenizer = original_exact_tokenizer(tokenizer, image_token) or tokenizer
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template or VICUNA_V1_CHAT_TEMPLATE)

    @classmethod
    def from_original(
        cls, llm_dir: str | os.PathLike, vision_dir: str | os.PathLike, **image_processor_kwargs
    ) -> "ConvLlavaProcessor":
        """
        Build the processor of an original ConvLLaVA checkpoint: the sentencepiece tokenizer of its LLM folder (plus
        `<image>`) with left padding, and the resolution of its vision-tower folder's `preprocessor_config.json`
        (`crop_size` as a dict or an int).
        """
        tokenizer = LlamaTokenizer.from_pretrained(llm_dir, padding_side="left")
        if "resolution" not in image_processor_kwargs:
            crop = json.loads((Path(vision_dir) / "preprocessor_config.json").read_text())["crop_size"]
            image_processor_kwargs["resolution"] = crop["height"] if isinstance(crop, dict) else crop
        return cls(ConvLlavaImageProcessor(**image_processor_kwargs), tokenizer)

    @classmethod
    def get_processor_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """
        The processor settings as transformers reads them; a stock folder's `LlavaProcessor` settings
        (`convllava-convert --layout fast_vlm`) are translated, after checking that they reproduce the original
        pipeline.
        """
        processor_dict, kwargs = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        if processor_dict.get("processor_class") == STOCK_PROCESSOR_CLASS:
            where = f"{pretrained_model_name_or_path}/processor_config.json"
            processor_dict = {**from_stock_processor(processor_dict, where), "processor_class": STOCK_PROCESSOR_CLASS}
        return processor_dict, kwargs

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """The base loading, except that a stock folder's image processor is rebuilt as a `ConvLlavaImageProcessor`."""
        if (processor_dict or {}).get("processor_class") != STOCK_PROCESSOR_CLASS:
            return super()._get_arguments_from_pretrained(pretrained_model_name_or_path, processor_dict, **kwargs)
        tokenizer = cls._load_tokenizer_from_pretrained("tokenizer", pretrained_model_name_or_path, **kwargs)
        return [ConvLlavaImageProcessor(**processor_dict["image_processor"]), tokenizer]

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """As transformers saves; `auto_map` goes into the files only, so `to_dict()` is the same after a reload."""
        with auto_map_in_files_only(self, self.image_processor):
            return super().save_pretrained(save_directory, *args, **kwargs)

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """
        The base layout, after refusing `text` that is neither a string nor a list of strings and `images` that mix
        single images with rows (lists) of images. An empty list of images (`[]`, or only empty rows) means no images.
        """
        if text is not None and not (
            isinstance(text, str) or (isinstance(text, (list, tuple)) and all(isinstance(item, str) for item in text))
        ):
            raise ValueError(
                f"`text` must be a string or a list of strings, got {type(text).__name__}: {str(text)[:80]!r}."
            )
        if isinstance(images, (list, tuple)):
            is_row = [isinstance(item, (list, tuple)) for item in images]
            if any(is_row) and not all(is_row):
                kinds = ", ".join("row" if row else "image" for row in is_row)
                raise ValueError(
                    "`images` must be a flat list of images or a list of rows (one list of images per text), not a "
                    f"mix of both: got [{kinds}]."
                )
            if all(row and not item for row, item in zip(is_row, images)):
                images = None  # [] or [[], ...]: text-only, as with images=None
        return super().prepare_inputs_layout(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """
        The base checks (as many images as `<image>` markers in total), plus: images given per text (a nested list)
        must have one row per text, holding as many images as that text has markers.
        """
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)
        if text is None or not isinstance(images, (list, tuple)):
            return
        if not any(isinstance(row, (list, tuple)) for row in images):
            return
        rows = [len(row) for row in images]  # all rows: prepare_inputs_layout refuses a mix
        markers = [sample.count(self.image_token) for sample in text]
        if rows != markers:
            raise ValueError(
                f"Images given as a nested list need one row per text, each with as many images as the text has "
                f"{self.image_token} markers: got rows of {rows} images for texts with {markers} markers."
            )

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """`"<image>" * n`: one image token per 64x64 pixels of the image's content size (`image_sizes`)."""
        height, width = (int(side) for side in image_inputs["image_sizes"][image_idx])
        return self.image_token * num_visual_tokens(height, width)

    def _check_special_mm_tokens(self, text: list[str], text_inputs, modalities: list[str]) -> None:
        """
        Refuse a truncation that cut into an image's tokens, naming the text, the image and the lengths (images are
        counted as runs of image tokens, so images written next to each other, `"<image><image>"`, count as one).
        """
        for index, (sample, input_ids) in enumerate(zip(text, text_inputs["input_ids"])):
            input_ids = input_ids.tolist() if hasattr(input_ids, "tolist") else list(input_ids)
            expected, kept = sample.count(self.image_token), input_ids.count(self.image_token_id)
            if kept == expected:
                continue
            marker = re.escape(self.image_token)
            runs = [len(run) // len(self.image_token) for run in re.findall(f"(?:{marker})+", sample)]
            keeps_start = self.tokenizer.truncation_side == "right"
            first_lost = kept if keeps_start else expected - kept - 1  # index among the text's image tokens
            image = next(i for i, end in enumerate(itertools.accumulate(runs)) if end > first_lost)
            full_ids = self.tokenizer(sample, add_special_tokens=self.tokenizer.bos_token_id in input_ids)["input_ids"]
            positions = [i for i, token in enumerate(full_ids) if token == self.image_token_id]
            needed = positions[-1] + 1 if keeps_start else len(full_ids) - positions[0]
            raise ValueError(
                f"Truncating text {index} to {len(input_ids)} tokens would cut into the tokens of its image {image} "
                f"(counting from 0): the text is {len(full_ids)} tokens long, {expected} of them image tokens, and "
                f"only {kept} of those would be kept. Use max_length >= {needed} or truncation=False."
            )

    def _get_num_multimodal_tokens(self, image_sizes: list[list[int]] | None = None, **kwargs) -> MultiModalData:
        """
        Placeholder tokens each image needs, without processing it.

        Args:
            image_sizes (`list[list[int]]`, *optional*): the (height, width) of each original image.
        """
        if image_sizes is None:
            return MultiModalData()
        images_kwargs = self._merge_kwargs(**kwargs)["images_kwargs"]
        num_image_tokens = [
            self.image_processor.num_image_tokens(
                height, width, images_kwargs.get("resolution"), images_kwargs.get("image_aspect_ratio")
            )
            for height, width in image_sizes
        ]
        return MultiModalData(num_image_tokens=num_image_tokens, num_image_patches=[1] * len(image_sizes))

    def post_process_grounding(
        self,
        texts: list[str],
        image_sizes: list[tuple[int, int]],
        image_aspect_ratio: str | None = None,
        clip: bool = True,
    ) -> list[tuple[float, float, float, float] | None]:
        """
        Pixel corners `(x1, y1, x2, y2)` in each ORIGINAL image of the `[x1, y1, x2, y2]` box in each answer (the
        padding of `"pad"` mode undone); `None` for an answer without a valid box. See [`convllava_hf.grounding`].

        Args:
            texts (`list[str]`): the decoded answers.
            image_sizes (`list[tuple[int, int]]`): each original image's `(height, width)` (not the processor's
                `image_sizes` output, which is the resized content).
            image_aspect_ratio (`str`, *optional*): `"pad"` or `"preserve"`; defaults to the image processor's.
            clip (`bool`, *optional*, defaults to `True`): clip the corners to the image.
        """
        mode = image_aspect_ratio or self.image_processor.image_aspect_ratio
        return post_process_grounding(texts, image_sizes, mode, clip)


__all__ = ["ConvLlavaProcessor"]
