"""A `Trainer` that can give the multimodal projector its own learning rate (the original `--mm_projector_lr`)."""

import torch
from transformers import Trainer

PROJECTOR_MODULE_NAME = "multi_modal_projector"


class ConvLlavaTrainer(Trainer):
    """
    [`Trainer`] with one extra option.

    Args:
        projector_lr: learning rate of the `multi_modal_projector` parameters (LoRA runs train the projector at 2e-5
            while the adapters use 2e-4); `None` trains everything at `args.learning_rate`.
    """

    def __init__(self, *args, projector_lr: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.projector_lr = projector_lr

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The standard optimizer, with the projector's parameters moved into groups of their own at `projector_lr`."""
        if self.optimizer is not None or self.projector_lr is None:
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        opt_model = self.model if model is None else model
        projector_ids = {id(p) for n, p in opt_model.named_parameters() if PROJECTOR_MODULE_NAME in n.split(".")}
        groups = []
        for group in optimizer.param_groups:
            for in_projector in (False, True):
                params = [p for p in group["params"] if (id(p) in projector_ids) == in_projector]
                if params:
                    groups.append({**group, "params": params, **({"lr": self.projector_lr} if in_projector else {})})
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer
