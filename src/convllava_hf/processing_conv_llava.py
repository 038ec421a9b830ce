"""Processor of ConvLLaVA: LLaVA's, counting each image's tokens from its own content size (`image_sizes`)."""

import itertools
import re

from transformers import AddedToken, LlavaProcessor
from transformers.processing_utils import MultiModalData

from .configuration_conv_llava import VISION_STRIDE, num_visual_tokens
from .image_processing_conv_llava import ConvLlavaImageProcessor

#: The `LlavaProcessor` settings of ConvLLaVA's tower: one token per 64x64 pixels, no CLS or other extra token.
LLAVA_SETTINGS = dict(patch_size=VISION_STRIDE, vision_feature_select_strategy="full", num_additional_image_tokens=0)


def add_image_token(tokenizer, image_token: str = "<image>") -> None:
    """Add `image_token` to a tokenizer that lacks it, as a special token (the id after its vocabulary)."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)


class ConvLlavaProcessor(LlavaProcessor):
    r"""
    A [`LlavaProcessor`] with a [`ConvLlavaImageProcessor`]: each `<image>` becomes one token per 64x64 pixels of its
    image's content (`image_sizes`). `convllava-convert` writes the original-exact tokenizer; stock folders load too.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size=VISION_STRIDE,
        vision_feature_select_strategy="full",
        chat_template=None,
        image_token="<image>",
        num_additional_image_tokens=0,
        **kwargs,
    ):
        kwargs.update(patch_size=patch_size, vision_feature_select_strategy=vision_feature_select_strategy)
        kwargs.update(num_additional_image_tokens=num_additional_image_tokens)
        for key, expected in LLAVA_SETTINGS.items():
            if kwargs[key] != expected:
                raise ValueError(
                    f"{key}={kwargs[key]!r}, but ConvLLaVA needs {key}={expected!r} (one image token per 64x64 pixels "
                    "of the last ConvNeXt stage, no extra tokens)."
                )
        if not hasattr(image_processor, "content_size"):  # a stock folder's LlavaImageProcessorPil
            settings = {key: value for key, value in image_processor.to_dict().items() if key != "image_processor_type"}
            image_processor = ConvLlavaImageProcessor(**settings)
        add_image_token(tokenizer, image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, image_token=image_token, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers saves; `auto_map` goes into the files only, so `to_dict()` is the same after a reload."""
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        self.__dict__.pop("auto_map", None), self.image_processor.__dict__.pop("auto_map", None)
        return saved

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """`"<image>" * n`: one image token per 64x64 pixels of the image's content size (`image_sizes`)."""
        height, width = (int(side) for side in image_inputs["image_sizes"][image_idx])
        return self.image_token * num_visual_tokens(height, width)

    def _get_num_multimodal_tokens(self, image_sizes: list[list[int]] | None = None, **kwargs) -> MultiModalData:
        """Image tokens each image of the given original (height, width) needs, without processing it."""
        if image_sizes is None:
            return MultiModalData()
        images_kwargs = self._merge_kwargs(**kwargs)["images_kwargs"]
        resolution, mode = images_kwargs.get("resolution"), images_kwargs.get("image_aspect_ratio")
        tokens = [self.image_processor.num_image_tokens(h, w, resolution, mode) for h, w in image_sizes]
        return MultiModalData(num_image_tokens=tokens, num_image_patches=[1] * len(image_sizes))

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """The base checks, plus: images given per text (a nested list) need one row per text, one per marker."""
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)
        nested = isinstance(images, (list, tuple)) and images and all(isinstance(row, (list, tuple)) for row in images)
        if text is not None and nested:
            rows, markers = [len(row) for row in images], [sample.count(self.image_token) for sample in text]
            if rows != markers:
                raise ValueError(
                    f"Images given as a nested list need one row per text, each with as many images as the text has "
                    f"{self.image_token} markers: got rows of {rows} images for texts with {markers} markers."
                )

    def _check_special_mm_tokens(self, text: list[str], text_inputs, modalities: list[str]) -> None:
        """The base check that truncation kept every image token; its message names the text, image and length."""
        try:
            super()._check_special_mm_tokens(text, text_inputs, modalities)
        except ValueError as error:
            token, token_id = self.image_token, self.image_token_id
            keeps_start = self.tokenizer.truncation_side == "right"
            for index, (sample, ids) in enumerate(zip(text, text_inputs["input_ids"])):
                ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
                full = self.tokenizer(sample, add_special_tokens=self.tokenizer.bos_token_id in ids)["input_ids"]
                kept, positions = ids.count(token_id), [i for i, t in enumerate(full) if t == token_id]
                if kept != len(positions):
                    lost = kept if keeps_start else len(positions) - kept - 1  # the first lost, among image tokens
                    runs = re.findall(f"(?:{re.escape(token)})+", sample)  # one run of image tokens per image
                    image = next(
                        i for i, end in enumerate(itertools.accumulate(map(len, runs))) if end > lost * len(token)
                    )
                    raise ValueError(
                        f"Truncating text {index} to {len(ids)} tokens would cut into the tokens of its image {image} "
                        f"(counting from 0): the text is {len(full)} tokens long, {len(positions)} of them image "
                        f"tokens, and only {kept} of those would be kept. Use max_length >= "
                        f"{positions[-1] + 1 if keeps_start else len(full) - positions[0]} or truncation=False."
                    ) from error
            raise


__all__ = ["ConvLlavaProcessor"]
