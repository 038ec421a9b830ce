"""ConvLlavaConfig and image-processor settings from an original ConvLLaVA checkpoint's three config files."""

from dataclasses import dataclass, field

import torch
from transformers import ConvNextConfig, LlamaConfig, PreTrainedConfig

from ..configuration_conv_llava import VISION_STRIDE, ConvLlavaConfig
from ..embedding_padding import padded_vocab_size
from .errors import ConversionError

#: Keys every transformers config may carry (v5 fields plus v4 `PretrainedConfig` attributes, generation
#: defaults included); they do not describe the architecture and are dropped.
GENERIC_KEYS = frozenset(PreTrainedConfig.__dataclass_fields__) | {
    "_name_or_path", "_commit_hash", "_attn_implementation", "torch_dtype", "use_bfloat16", "torchscript",
    "tf_legacy_loss", "pruned_heads", "output_attentions", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "finetuning_task", "num_labels", "tokenizer_class",
    "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k",
    "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
}  # fmt: skip

#: Llama architecture keys, carried into `text_config` (`rope_theta` / `rope_scaling` are the v4 spellings).
LLAMA_KEYS = (frozenset(LlamaConfig.__dataclass_fields__) - frozenset(PreTrainedConfig.__dataclass_fields__)) | {
    "rope_theta",
    "rope_scaling",
}

#: Training-time settings the original writes into config.json; they have no effect on inference.
TRAINING_KEYS = frozenset(
    {
        "freeze_mm_mlp_adapter", "mm_projector_lr", "tune_entire_model", "tune_mm_mlp_adapter",
        "tune_vision_tower", "vision_tower_lr", "tune_vit_from_layer", "freeze_backbone", "use_mm_proj",
        "mm_vision_tower", "image_grid_pinpoints", "tokenizer_padding_side", "vision_five_stage_width",
    }
)  # fmt: skip

#: LLaVA keys whose values this module checks or uses.
LLAVA_KEYS = frozenset(
    {
        "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature",
        "mm_use_im_start_end", "mm_use_im_patch_token", "mm_patch_merge_type", "image_aspect_ratio",
        "tokenizer_model_max_length", "mm_vision_resolution", "vision_add_five_stage",
    }
)  # fmt: skip

CONVNEXT_KEYS = frozenset(ConvNextConfig.__dataclass_fields__) - frozenset(PreTrainedConfig.__dataclass_fields__)
#: Backbone bookkeeping in v4 ConvNext configs, recomputed by `ConvNextConfig`.
#: Keys the converter drops: the backbone API's, and `hidden_size` (the width LLaVA reads, derived by the config).
CONVNEXT_BACKBONE_KEYS = frozenset({"out_features", "out_indices", "stage_names", "hidden_size"})

#: LLM settings without a safe default: a missing one would silently fall back to LlamaConfig's 7B value.
REQUIRED_LLM_SETTINGS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")

#: CLIPImageProcessor switches the original pipeline relies on.
REQUIRED_PREPROCESSING_STEPS = ("do_resize", "do_center_crop", "do_rescale", "do_normalize")


@dataclass
class ConfigConversion:
    """Everything the converter derives from the original config files."""

    config: ConvLlavaConfig
    original_vocab_size: int
    image_processor_kwargs: dict
    #: Prefix of the vision tensors to leave out (the block the original deletes for `mm_vision_select_layer=-2`).
    dropped_vision_prefix: str | None = None
    #: Human-readable decisions worth telling the user (logged and written into the model card).
    notes: list[str] = field(default_factory=list)


def check_llm_settings(llm_config: dict, path: object) -> None:
    """Refuse an LLM `config.json` (at `path`) whose size settings are missing or not positive integers."""
    bad = [
        key
        for key in REQUIRED_LLM_SETTINGS
        if not isinstance(llm_config.get(key), int) or isinstance(llm_config[key], bool) or llm_config[key] <= 0
    ]
    if bad:
        found = ", ".join(f"{key}={llm_config.get(key, '<missing>')!r}" for key in bad)
        raise ConversionError(f"{path} must give {', '.join(bad)} as positive integers; found {found}.")


def _split_llm_keys(llm_config: dict) -> dict:
    unknown = sorted(set(llm_config) - GENERIC_KEYS - LLAMA_KEYS - TRAINING_KEYS - LLAVA_KEYS)
    if unknown:
        raise ConversionError(
            f"The LLM config.json has keys this converter does not know, so it cannot promise a faithful "
            f"conversion: {', '.join(unknown)}."
        )
    if llm_config.get("model_type") not in ("llava", "llava_llama"):
        raise ConversionError(
            f"The LLM config.json has model_type {llm_config.get('model_type')!r}; an original ConvLLaVA checkpoint "
            f"has 'llava' (LlavaLlamaForCausalLM)."
        )
    architectures = llm_config.get("architectures") or ["LlavaLlamaForCausalLM"]
    if architectures != ["LlavaLlamaForCausalLM"]:
        raise ConversionError(
            f"Only LlavaLlamaForCausalLM checkpoints can be converted, got architectures {architectures}."
        )
    return {key: value for key, value in llm_config.items() if key in LLAMA_KEYS}


def _check_llava_settings(llm_config: dict, notes: list[str]) -> None:
    refusals = {
        "mm_projector_type": (
            llm_config.get("mm_projector_type") != "mlp2x_gelu",
            "only the 'mlp2x_gelu' projector of the released models is supported (a missing value means 'linear')",
        ),
        "mm_use_im_start_end": (
            bool(llm_config.get("mm_use_im_start_end", False)),
            "the original would wrap images in <im_start>/<im_end> tokens, which this port does not implement",
        ),
        "mm_use_im_patch_token": (
            llm_config.get("mm_use_im_patch_token") is True,
            "the original would add an <im_patch> token with a randomly initialised embedding row",
        ),
        "mm_patch_merge_type": (
            llm_config.get("mm_patch_merge_type", "flat") != "flat",
            "only the 'flat' merge (no image_newline parameter) of the released models is supported",
        ),
        "image_aspect_ratio": (
            llm_config.get("image_aspect_ratio") != "pad",
            "the released models use 'pad'; any other value makes the original skip the mean-colour padding, "
            "which the converted processor would not reproduce",
        ),
        "vision_add_five_stage": (
            bool(llm_config.get("vision_add_five_stage", 0)),
            "the original would append a randomly initialised extra stage to the loaded tower at load time",
        ),
        "tie_word_embeddings": (
            bool(llm_config.get("tie_word_embeddings", False)),
            "ConvLLaVA checkpoints have an untied lm_head",
        ),
    }
    for key, (refused, reason) in refusals.items():
        if refused:
            raise ConversionError(f"Cannot convert {key}={llm_config.get(key)!r}: {reason}.")
    if "mm_use_im_patch_token" not in llm_config:
        notes.append(
            "The original config has no mm_use_im_patch_token, which the original loader treats as true (it adds an "
            "unused <im_patch> token with a random embedding row); the conversion adds no such token."
        )
    if llm_config.get("mm_vision_select_feature", "patch") != "patch":
        notes.append(
            f"mm_vision_select_feature={llm_config['mm_vision_select_feature']!r} is ignored, as by the original's "
            f"ConvNeXt tower, which always returns every position of the last stage."
        )
    if llm_config.get("tokenizer_model_max_length") is not None:
        notes.append(
            f"The original cut every sequence to tokenizer_model_max_length={llm_config['tokenizer_model_max_length']} "
            f"tokens after inserting the image tokens; the converted model does not truncate, so keep prompts and "
            f"generations within that length to stay in the regime the model was trained on."
        )


def _vision_feature_settings(llm_config: dict, depths: list[int], notes: list[str]) -> str | None:
    """Apply `mm_vision_select_layer` as the original does; returns the prefix of a deleted block, if any."""
    if "mm_vision_select_layer" not in llm_config:
        raise ConversionError("The LLM config.json has no mm_vision_select_layer; the original cannot load it either.")
    select_layer = llm_config["mm_vision_select_layer"]
    if select_layer == -2:
        if depths[-1] < 2:
            raise ConversionError(
                "mm_vision_select_layer=-2 deletes the last block of the last stage, which has only one."
            )
        depths[-1] -= 1
        notes.append(
            f"mm_vision_select_layer=-2: the original deletes the last block of the last ConvNeXt stage at load time "
            f"and uses the output of the shortened stage; the converted tower has that stage with {depths[-1]} blocks."
        )
        return f"encoder.stages.{len(depths) - 1}.layers.{depths[-1]}."
    if select_layer != -1:
        notes.append(
            f"mm_vision_select_layer={select_layer!r} is ignored, as by the original's ConvNeXt tower, which always "
            f"uses the output of the last stage; converted as vision_feature_layer=-1."
        )
    return None


def _convnext_config(vision_config: dict) -> dict:
    unknown = sorted(set(vision_config) - GENERIC_KEYS - CONVNEXT_KEYS - CONVNEXT_BACKBONE_KEYS)
    if unknown:
        raise ConversionError(f"The vision config.json has keys this converter does not know: {', '.join(unknown)}.")
    if vision_config.get("model_type") != "convnext":
        raise ConversionError(
            f"The vision tower must be a ConvNeXt (model_type 'convnext'), got {vision_config.get('model_type')!r}."
        )
    convnext = {key: value for key, value in vision_config.items() if key in CONVNEXT_KEYS}
    num_stages = convnext.get("num_stages", 4)
    if num_stages != 5 or len(convnext.get("depths", [])) != 5 or len(convnext.get("hidden_sizes", [])) != 5:
        raise ConversionError(
            f"ConvLLaVA's vision tower has 5 stages (total stride {VISION_STRIDE}); this one has "
            f"num_stages={num_stages}, depths={convnext.get('depths')}, hidden_sizes={convnext.get('hidden_sizes')}. "
            f"A 4-stage LAION ConvNeXt is turned into a 5-stage tower by convert_laion_convnext."
        )
    return {"model_type": "convnext", **convnext, "depths": list(convnext["depths"])}


def image_processor_settings(preprocessor: dict, llm_config: dict, notes: list[str]) -> dict:
    """Keyword arguments of `ConvLlavaImageProcessor` reproducing the original `CLIPImageProcessor` + "pad" pipeline."""
    skipped = [step for step in REQUIRED_PREPROCESSING_STEPS if preprocessor.get(step) is False]
    if skipped:
        raise ConversionError(
            f"The original preprocessor_config.json turns off {', '.join(skipped)}; the converted processor cannot."
        )
    crop, size = preprocessor.get("crop_size"), preprocessor.get("size")
    crop_side = crop.get("height") if isinstance(crop, dict) else crop
    shortest = size.get("shortest_edge") if isinstance(size, dict) else size
    if not isinstance(crop, (dict, int)) or (isinstance(crop, dict) and crop.get("width") != crop_side):
        raise ConversionError(f"preprocessor_config.json crop_size must be a square, got {crop!r}.")
    if shortest != crop_side:
        raise ConversionError(
            f"preprocessor_config.json resizes to shortest_edge={shortest!r} but crops {crop_side!r}; the original "
            f"pads images to squares, so the released models use equal values."
        )
    resolution = crop_side
    override = llm_config.get("mm_vision_resolution")
    if isinstance(override, int) and override > 256 and override != resolution:
        notes.append(
            f"mm_vision_resolution={override} overrides the vision folder's {resolution}x{resolution}, "
            f"as in the original."
        )
        resolution = override
    settings = {"resolution": resolution, "image_aspect_ratio": "pad"}
    for key in ("image_mean", "image_std", "resample", "rescale_factor"):
        if key in preprocessor:
            settings[key] = preprocessor[key]
    return settings


def convert_configs(llm_config: dict, vision_config: dict, preprocessor: dict, dtype: torch.dtype) -> ConfigConversion:
    """
    Build the ConvLlavaConfig of a converted checkpoint from the original LLM `config.json`, the vision folder's
    `config.json` and its `preprocessor_config.json`, refusing settings that the port cannot reproduce.
    """
    notes: list[str] = []
    text_config = _split_llm_keys(llm_config)
    _check_llava_settings(llm_config, notes)
    convnext = _convnext_config(vision_config)
    dropped = _vision_feature_settings(llm_config, convnext["depths"], notes)
    processor_settings = image_processor_settings(preprocessor, llm_config, notes)
    mm_hidden_size = llm_config.get("mm_hidden_size")
    if mm_hidden_size != convnext["hidden_sizes"][-1]:
        raise ConversionError(
            f"mm_hidden_size={mm_hidden_size!r} does not match the vision tower's last stage width "
            f"{convnext['hidden_sizes'][-1]}; the LLM and vision folders do not belong together."
        )
    original_vocab_size = text_config["vocab_size"]
    text_config.pop("use_cache", None)  # training configs say False; generation uses the cache, as the original did
    text_config.update(model_type="llama", vocab_size=padded_vocab_size(original_vocab_size + 1), dtype=dtype)
    try:
        config = ConvLlavaConfig(
            vision_config={**convnext, "image_size": processor_settings["resolution"], "dtype": dtype},
            text_config=text_config,
            image_token_index=original_vocab_size,
            image_resolution=processor_settings["resolution"],
            vision_feature_layer=-1,
            projector_hidden_act="gelu",
            multimodal_projector_bias=True,
            dtype=dtype,
            architectures=["ConvLlavaForConditionalGeneration"],
        )
    except (TypeError, ValueError) as error:
        raise ConversionError(f"The original settings do not make a valid ConvLlavaConfig: {error}") from error
    return ConfigConversion(config, original_vocab_size, processor_settings, dropped, notes)
