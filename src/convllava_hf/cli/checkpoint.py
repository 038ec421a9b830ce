"""Loading a converted checkpoint for the command-line tools: a failure stops the command, never falls back."""

from ..checkpoint_source import UnconvertedCheckpointError, load_failure
from ..model_loading import CheckpointLoadError, load_model_and_processor
from ..modeling_conv_llava import ConvLlavaForConditionalGeneration
from ..processing_conv_llava import ConvLlavaProcessor


def load_checkpoint(
    model_id: str, failure_prefix: str, load_in_4bit: bool = False, device_map: str | None = None
) -> tuple[ConvLlavaForConditionalGeneration, ConvLlavaProcessor]:
    """
    `load_model_and_processor`, the language model quantized to 4 bits on request. Any load error exits with
    `"{failure_prefix} {model_id!r}: {error type}: {error}"` (saying first that no such local folder exists, if so);
    an original ConvLLaVA folder with the command converting it.
    """
    try:
        return load_model_and_processor(
            model_id, device_map=device_map, quantization="4bit" if load_in_4bit else None, name=failure_prefix
        )
    except UnconvertedCheckpointError as error:
        raise SystemExit(str(error)) from error
    except Exception as error:
        reason = error if isinstance(error, CheckpointLoadError) else load_failure(model_id, error)
        raise SystemExit(f"{failure_prefix} {model_id!r}: {reason}") from error
