"""
Run as a script, trains one ConvLLaVA folder for a few steps with TRL's SFTTrainer (assistant-only loss), DPOTrainer
(no `ref_model`: TRL builds it; once more with eager attention asked for the policy) and GRPOTrainer (a toy reward),
each on a tiny vision dataset, the model given as its path as a TRL user would, and writes what test_trl_trainers.py
checks. With `--block-package`, `convllava_hf` cannot be imported (a stock `fast_vlm` folder must need none of it);
without, the package is imported first (its own layout).
Usage: `python trl_worker.py FOLDER OUT_JSON [--block-package]`.
"""

import json
import sys
import traceback
from pathlib import Path

import torch
from PIL import Image

from remote_code_worker import BlockConvLlavaHf, package_is_importable

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "original-tiny"  # not tiny_models: it imports the package

IMAGES = ["landscape_320x200.png", "portrait_150x260.png", "square_256x256.png"]
# (question, reply) turns of each conversation; the last one has two rounds on its one image.
SFT_CONVERSATIONS = [
    [("What is shown in this image?", "A landscape.")],
    [("Describe the colors of the shapes.", "Red and blue.")],
    [("Where is the red circle?", "On the left."), ("And the square?", "On the right side.")],
]


def image(index: int) -> Image.Image:
    return Image.open(FIXTURE_DIR / "images" / IMAGES[index % len(IMAGES)]).convert("RGB")


def user(text: str, with_image: bool) -> dict:
    content = [{"type": "image"}] if with_image else []
    return {"role": "user", "content": [*content, {"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def sft_dataset():
    from datasets import Dataset

    messages = []
    for turns in SFT_CONVERSATIONS:
        conversation = []
        for index, (question, reply) in enumerate(turns):
            conversation += [user(question, with_image=index == 0), assistant(reply)]
        messages.append(conversation)
    return Dataset.from_dict({"messages": messages, "images": [[image(i)] for i in range(len(messages))]})


def common_args() -> dict:
    return {
        "output_dir": "unused", "report_to": "none", "save_strategy": "no", "logging_steps": 1, "use_cpu": True,
        "seed": 0, "gradient_checkpointing": False, "dataloader_num_workers": 0,
    }  # fmt: skip


def parameters_moved(before: dict[str, torch.Tensor], model) -> dict[str, bool]:
    after = dict(model.named_parameters())
    moved = {name: not torch.equal(tensor, after[name].detach()) for name, tensor in before.items()}
    return {part: any(v for k, v in moved.items() if part in k) for part in ("language_model", "multi_modal_projector")}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def run_sft(folder: str) -> dict:
    from trl import SFTConfig, SFTTrainer

    dataset = sft_dataset()
    config = SFTConfig(
        **common_args(), assistant_only_loss=True, max_steps=8, learning_rate=5e-3,
        per_device_train_batch_size=3, max_length=None,
    )  # fmt: skip
    trainer = SFTTrainer(model=folder, args=config, train_dataset=dataset)
    batch = trainer.data_collator([dict(example) for example in dataset])
    before = snapshot(trainer.model)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "model_class": type(trainer.model).__name__,
        "processor_class": type(trainer.processing_class).__name__,
        "losses": losses,
        "input_ids": batch["input_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(),
        "labels": batch["labels"].tolist(),
        "conversations": SFT_CONVERSATIONS,
        "moved": parameters_moved(before, trainer.model),
    }


def run_dpo(folder: str, model_init_kwargs: dict | None = None) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    questions = ["What is shown in this image?", "Describe the colors of the shapes.", "Where is the red circle?"]
    dataset = Dataset.from_dict({
        "prompt": [[user(question, with_image=True)] for question in questions],
        "chosen": [[assistant("Shapes and colors.")] for _ in questions],
        "rejected": [[assistant("No idea at all.")] for _ in questions],
        "images": [[image(i)] for i in range(len(questions))],
    })  # fmt: skip
    config = DPOConfig(
        **common_args(), max_steps=2, learning_rate=1e-3, per_device_train_batch_size=3,
        model_init_kwargs=model_init_kwargs,
    )  # fmt: skip
    trainer = DPOTrainer(model=folder, args=config, train_dataset=dataset)
    before = snapshot(trainer.model)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {
        "model_class": type(trainer.model).__name__,
        "ref_model_class": type(trainer.ref_model).__name__ if trainer.ref_model is not None else None,
        "ref_attn_implementation": trainer.ref_model.config._attn_implementation if trainer.ref_model else None,
        "losses": [entry["loss"] for entry in logged],
        "reward_margins": [entry.get("rewards/margins") for entry in logged],
        "moved": parameters_moved(before, trainer.model),
    }


def run_grpo(folder: str) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    questions = ["What is shown in this image?", "Where is the red circle?"]
    dataset = Dataset.from_dict({
        "prompt": [[user(question, with_image=True)] for question in questions],
        "images": [[image(i)] for i in range(len(questions))],
    })  # fmt: skip
    completions_seen: list[str] = []

    def reward_length(completions, **kwargs) -> list[float]:
        texts = [
            completion[-1]["content"] if isinstance(completion, list) else completion for completion in completions
        ]
        completions_seen.extend(texts)
        return [float(len(text)) for text in texts]

    config = GRPOConfig(
        **common_args(), max_steps=2, learning_rate=1e-3, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=6, temperature=1.0,
    )  # fmt: skip
    trainer = GRPOTrainer(model=folder, reward_funcs=reward_length, args=config, train_dataset=dataset)
    before = snapshot(trainer.model)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    return {
        "model_class": type(trainer.model).__name__,
        "rewards": [entry["reward"] for entry in logged],
        "completions": completions_seen,
        "moved": parameters_moved(before, trainer.model),
    }


def main() -> None:
    folder, out_file, *flags = sys.argv[1:]
    if "--block-package" in flags:
        sys.meta_path.insert(0, BlockConvLlavaHf())
        assert not package_is_importable()
    else:
        import convllava_hf  # noqa: F401  (registers the conv_llava Auto classes, as a package user has them)
    torch.manual_seed(0)
    results = {}
    runs = {"sft": run_sft, "dpo": run_dpo, "grpo": run_grpo}
    runs["dpo_eager"] = lambda folder: run_dpo(folder, {"attn_implementation": "eager"})  # the README's advice
    for name, run in runs.items():
        try:
            results[name] = run(folder)
        except Exception as error:  # the test shows the trace and names the trainer
            results[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    results["loaded_convllava_hf"] = any(m.partition(".")[0] == "convllava_hf" for m in sys.modules)
    Path(out_file).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
