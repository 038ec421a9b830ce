"""
An installed torchvision that cannot load beside this torch (e.g. lmms-eval's or vLLM's default wheel) breaks
transformers' image classes with a message that hides the cause ("Could not import module 'AutoImageProcessor'").
Name it instead. ConvLLaVA itself does not use torchvision.
"""

import importlib.util


def check_torchvision_loads() -> None:
    """Raise an `ImportError` naming torchvision and the fix when an installed torchvision fails to import."""
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401  (transformers imports it too, for its image processors)
    except Exception as error:
        import torch

        raise ImportError(
            f"convllava_hf cannot load: torchvision is installed but fails to import beside torch {torch.__version__} "
            f"({type(error).__name__}: {error}), so transformers cannot import its image classes. ConvLLaVA does not "
            "use torchvision: uninstall it (pip uninstall torchvision) or install the build that matches this torch."
        ) from error
