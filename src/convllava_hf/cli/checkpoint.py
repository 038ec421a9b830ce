"""Loading a converted checkpoint for the command-line tools: a failure stops the command, never falls back."""

from transformers import BitsAndBytesConfig

from ..checkpoint_source import load_failure, unconverted_note
from ..modeling_conv_llava import ConvLlavaForConditionalGeneration
from ..processing_conv_llava import ConvLlavaProcessor


def load_checkpoint(
    model_id: str, failure_prefix: str, load_in_4bit: bool = False, device_map: str | None = None
) -> tuple[ConvLlavaForConditionalGeneration, ConvLlavaProcessor]:
    """
    The eval-mode model and the processor of a converted checkpoint (folder or Hub id, either layout) as the package's
    classes (so `preserve` mode works on a stock folder too), the language model quantized to 4 bits on request. Any
    load error exits with `"{failure_prefix} {model_id!r}: {error type}: {error}"` (saying first that no such local
    folder exists, if so); an original ConvLLaVA folder with the command converting it.
    """
    quantization = BitsAndBytesConfig(load_in_4bit=True) if load_in_4bit else None
    if note := unconverted_note(model_id):
        raise SystemExit(f"{failure_prefix} {model_id!r}: it holds {note}")
    try:
        processor = ConvLlavaProcessor.from_pretrained(model_id)
        model = ConvLlavaForConditionalGeneration.from_pretrained(
            model_id, dtype="auto", device_map=device_map, quantization_config=quantization
        )
    except Exception as error:
        raise SystemExit(f"{failure_prefix} {model_id!r}: {load_failure(model_id, error)}") from error
    return model.eval(), processor
