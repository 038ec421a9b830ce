"""Loading a converted checkpoint for the command-line tools: a failure stops the command, never falls back."""

from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig, PreTrainedModel, ProcessorMixin


def load_checkpoint(
    model_id: str, failure_prefix: str, load_in_4bit: bool = False, device_map: str | None = None
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    The eval-mode model and the processor of a converted checkpoint (folder or Hub id), the language model quantized
    to 4 bits on request. Any load error exits with `"{failure_prefix} {model_id!r}: {error type}: {error}"`.
    """
    quantization = BitsAndBytesConfig(load_in_4bit=True) if load_in_4bit else None
    try:
        processor = AutoProcessor.from_pretrained(model_id)
        model = AutoModelForImageTextToText.from_pretrained(
            model_id, dtype="auto", device_map=device_map, quantization_config=quantization
        )
    except Exception as error:
        raise SystemExit(f"{failure_prefix} {model_id!r}: {type(error).__name__}: {error}") from error
    return model.eval(), processor
