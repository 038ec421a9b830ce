"""A small, randomly initialised ConvLLaVA with a byte-level tokenizer, for running the pipeline without weights."""

from pathlib import Path

from transformers import LlamaTokenizer

from ..chat_template import VICUNA_V1_CHAT_TEMPLATE
from ..configuration_conv_llava import ConvLlavaConfig
from ..image_processing_conv_llava import ConvLlavaImageProcessor
from ..modeling_conv_llava import ConvLlavaForConditionalGeneration
from ..processing_conv_llava import ConvLlavaProcessor

DEMO_RESOLUTION = 768  # 12 x 12 = 144 visual tokens, like ConvLLaVA-768
#: The picture the tools and examples show when given none.
DEMO_IMAGE = Path(__file__).resolve().parent / "demo_image.png"
#: What the tools say when they run the demo model.
DEMO_MODE_NOTICE = (
    "DEMO MODE: a small ConvLLaVA with RANDOM weights, built on the fly, so its answers are gibberish. Start it with "
    "--model and a converted checkpoint for real answers."
)


def character_tokenizer() -> LlamaTokenizer:
    """A Llama tokenizer whose vocabulary is `<unk>`, `<s>`, `</s>`, the word boundary and printable ASCII."""
    characters = ["\u2581", *(chr(code) for code in range(33, 127))]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {character: 3 + index for index, character in enumerate(characters)}
    return LlamaTokenizer(vocab=vocab, merges=[], pad_token="<unk>")


def build_demo_model_and_processor(seed: int = 0) -> tuple[ConvLlavaForConditionalGeneration, ConvLlavaProcessor]:
    """A ~10M-parameter ConvLLaVA with RANDOM weights (it answers gibberish) and a matching processor."""
    import torch

    tokenizer = character_tokenizer()
    image_processor = ConvLlavaImageProcessor(resolution=DEMO_RESOLUTION)
    processor = ConvLlavaProcessor(image_processor, tokenizer, chat_template=VICUNA_V1_CHAT_TEMPLATE)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    config = ConvLlavaConfig(
        vision_config={
            "model_type": "convnext",
            "num_stages": 5,
            "depths": [1, 1, 2, 1, 1],
            "hidden_sizes": [32, 64, 128, 256, 512],
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(processor.tokenizer),  # every id decodes to a token
            "hidden_size": 256,
            "intermediate_size": 512,  # a multiple of bitsandbytes' CPU 4-bit block
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        image_token_index=image_token_id,
        image_resolution=DEMO_RESOLUTION,
    )
    torch.manual_seed(seed)
    return ConvLlavaForConditionalGeneration(config).eval(), processor
