"""lmms-eval's `lmms_eval.models` entry point: makes `--model convllava` resolve to this package's model class."""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(
    model_id="convllava",
    simple_class_path="convllava_hf.evaluation.lmms_eval_model.ConvLlava",
    aliases=("conv_llava",),
)
