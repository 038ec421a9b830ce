"""Processor of ConvLLaVA: image processor + Llama tokenizer, tokenising around `<image>` exactly like the original."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

from transformers import AddedToken, BatchFeature, LlamaTokenizer
from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import BatchEncoding, PreTrainedTokenizerBase, TextInput
from transformers.utils import logging

from .chat_template import VICUNA_V1_CHAT_TEMPLATE
from .configuration_conv_llava import VISION_STRIDE
from .image_processing_conv_llava import ConvLlavaImageProcessor

SPIECE_UNDERLINE = "\u2581"

logger = logging.get_logger(__name__)


class ConvLlavaProcessor(ProcessorMixin):
    r"""
    Wraps a [`ConvLlavaImageProcessor`] and a Llama tokenizer that has an `<image>` special token.

    Each `<image>` in the text stands for the next image and becomes `(h / 64) * (w / 64)` image-token ids, `(h, w)`
    being that image's entry in `image_sizes`. The ids equal the original ConvLLaVA's `tokenizer_image_token`: the
    text is split on `<image>`, every piece is tokenised on its own (so each gets sentencepiece's dummy-prefix space,
    e.g. `"USER: <image>\nQ"` gives `... ":", "▁", <image>..., "▁", "<0x0A>", ...`), and only the first piece keeps
    its BOS. Batches are padded on the tokenizer's padding side (left for processors built by [`from_original`]).

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
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template or VICUNA_V1_CHAT_TEMPLATE)

    @classmethod
    def from_original(
        cls, llm_dir: str | os.PathLike, vision_dir: str | os.PathLike, **image_processor_kwargs
    ) -> "ConvLlavaProcessor":
        """
        Build the processor of an original ConvLLaVA checkpoint: the sentencepiece tokenizer of its LLM folder (plus
        `<image>`) with left padding, and the resolution of its vision-tower folder's `preprocessor_config.json`.
        """
        tokenizer = LlamaTokenizer.from_pretrained(llm_dir, padding_side="left")
        if "resolution" not in image_processor_kwargs:
            crop = json.loads((Path(vision_dir) / "preprocessor_config.json").read_text())["crop_size"]
            image_processor_kwargs["resolution"] = crop["height"] if isinstance(crop, dict) else crop
        return cls(ConvLlavaImageProcessor(**image_processor_kwargs), tokenizer)

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        """
        Process `images` (see [`ConvLlavaImageProcessor`]) and tokenise `text` with every `<image>` expanded.

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` (when `text` is given), `pixel_values` and
            `image_sizes` (when `images` are given).
        """
        images, text, _, _ = self.prepare_inputs_layout(images=images, text=text)
        self.validate_inputs(images=images, text=text, **kwargs)
        output_kwargs = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        image_inputs = {} if images is None else self.image_processor(images, **output_kwargs["images_kwargs"])
        text_inputs = {}
        if text is not None:
            sizes = image_inputs.get("image_sizes", [])
            counts = iter(int(height) // VISION_STRIDE * (int(width) // VISION_STRIDE) for height, width in sizes)
            text_inputs = self._tokenize(text, counts, **output_kwargs["text_kwargs"])
        return_tensors = output_kwargs["text_kwargs"].get("return_tensors")
        return BatchFeature({**text_inputs, **image_inputs}, tensor_type=return_tensors)

    def _tokenize(
        self,
        texts: list[str],
        image_token_counts: Iterator[int],
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        padding: bool | str = False,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        **unused,
    ) -> BatchEncoding:
        """Encode each text with its images' token counts, then pad (`unused`: other tokenizer settings)."""
        if truncation not in (None, False, "do_not_truncate"):
            raise ValueError("ConvLlavaProcessor does not truncate: cutting a prompt could drop image tokens.")
        input_ids = [self.encode_text(text, image_token_counts, add_special_tokens) for text in texts]
        return self.tokenizer.pad(
            {"input_ids": input_ids},
            padding=padding,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_attention_mask=return_attention_mask,
            return_tensors=return_tensors,
        )

    def encode_text(self, text: str, image_token_counts: Iterator[int], add_special_tokens: bool = True) -> list[int]:
        """
        Token ids of one text as the original's `tokenizer_image_token` builds them, each `<image>` expanded to
        `next(image_token_counts)` image-token ids (the counts of the text's images, in order).
        """
        pieces = [self._with_dummy_prefix(piece) for piece in text.split(self.image_token)]
        chunks = self.tokenizer(pieces, add_special_tokens=add_special_tokens)["input_ids"]
        offset = int(bool(chunks[0]) and chunks[0][0] == self.tokenizer.bos_token_id)
        input_ids = chunks[0][:offset]
        for index, chunk in enumerate(chunks):
            if index:
                input_ids += [self.image_token_id] * next(image_token_counts)
            input_ids += chunk[offset:]
        return input_ids

    def _with_dummy_prefix(self, piece: str) -> str:
        """
        Match the slow sentencepiece tokenizer on pieces that start with whitespace: it always prepends the dummy
        prefix ("▁" + " Hi" -> "▁", "▁Hi"), whereas the tokenizers Metaspace pre-tokenizer skips it when the text
        already starts with one ("▁Hi"). Other pieces tokenise identically and are left alone.
        """
        if getattr(self.tokenizer, "add_prefix_space", False) and piece.startswith((" ", SPIECE_UNDERLINE)):
            return SPIECE_UNDERLINE + piece
        return piece

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
        from .grounding import post_process_grounding

        mode = image_aspect_ratio or self.image_processor.image_aspect_ratio
        return post_process_grounding(texts, image_sizes, mode, clip)


__all__ = ["ConvLlavaProcessor"]
