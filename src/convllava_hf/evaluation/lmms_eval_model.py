"""
The `convllava` model of lmms-eval (0.7.x), registered through the `lmms_eval.models` entry point:

    lmms-eval --model convllava --model_args pretrained=FOLDER_OR_ID,dtype=bfloat16 --tasks mme,pope

Prompts go through the checkpoint's Vicuna v1 chat template (each image of a document becomes an `<image>` before
the question, like the original LLaVA evaluation); answers are greedy unless a task asks for sampling. Data parallel
with `accelerate launch --num_processes N -m lmms_eval ...`: each process holds a whole model on its own GPU.
"""

import json
from collections import defaultdict

import PIL.Image
import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.utils import simple_parse_args_string
from tqdm import tqdm

from .loading import load_for_evaluation

MODEL_ARGS = (
    "pretrained", "dtype", "device_map", "attn_implementation", "load_in_4bit", "load_in_8bit",
    "image_aspect_ratio", "resolution", "batch_size", "max_new_tokens",
)  # fmt: skip
LMMS_EVAL_ARGS = ("device", "max_batch_size")  # what lmms-eval's own command line passes every model
DEFAULT_MAX_NEW_TOKENS = 1024  # when neither the task nor `max_new_tokens` in model_args sets one
GENERATION_KWARGS = ("until", "max_new_tokens", "temperature", "top_p", "num_beams", "do_sample")


def _as_bool(value: bool | str, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def _as_positive_int(value: int | str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return number


class ConvLlava(lmms):
    """
    ConvLLaVA for lmms-eval. `model_args`: `pretrained` (a converted folder or Hub id, required), `dtype` (auto),
    `device_map`, `attn_implementation`, `load_in_4bit`, `load_in_8bit`, `image_aspect_ratio` (pad | preserve),
    `resolution`, `batch_size` (1; wins over `--batch_size`) and `max_new_tokens` (the default when a task sets
    none). Each request's `until`, `max_new_tokens`, `temperature`, `top_p`, `num_beams` and `do_sample: false` are
    honoured; other generation settings of a task (e.g. LLaVA's `image_aspect_ratio: original`) are ignored.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        dtype: str = "auto",
        device_map: str | None = None,
        attn_implementation: str | None = None,
        load_in_4bit: bool | str = False,
        load_in_8bit: bool | str = False,
        image_aspect_ratio: str | None = None,
        resolution: int | str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int | str | None = None,
        device: str | None = None,
        max_batch_size: int | None = None,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"Unknown convllava model_args {sorted(unknown)}; valid keys: {', '.join(MODEL_ARGS)} "
                f"(lmms-eval itself passes {', '.join(LMMS_EVAL_ARGS)})."
            )
        if not pretrained:
            raise ValueError(
                "convllava needs model_args pretrained=FOLDER_OR_HUB_ID (a converted ConvLLaVA checkpoint)."
            )
        self.batch_size_per_gpu = _as_positive_int(batch_size, "batch_size")
        self.max_new_tokens = _as_positive_int(max_new_tokens, "max_new_tokens") or DEFAULT_MAX_NEW_TOKENS

        accelerator = Accelerator()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if accelerator.num_processes > 1 and device_map is None and torch.device(device).type == "cuda":
            device = f"cuda:{accelerator.local_process_index}"  # data parallel: one whole model per process
        self._model, self.processor = load_for_evaluation(
            pretrained,
            dtype=dtype,
            device_map=device_map or device,
            attn_implementation=attn_implementation,
            load_in_4bit=_as_bool(load_in_4bit, "load_in_4bit"),
            load_in_8bit=_as_bool(load_in_8bit, "load_in_8bit"),
            image_aspect_ratio=image_aspect_ratio,
            resolution=_as_positive_int(resolution, "resolution"),
        )
        self._device = self._model.device
        self.accelerator = accelerator
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "ConvLlava":
        """Build from `key=value,...` model_args plus lmms-eval's own settings; model_args win (e.g. `batch_size`)."""
        args = simple_parse_args_string(arg_string)
        extra = {
            key: value for key, value in (additional_config or {}).items() if value is not None and key not in args
        }
        return cls(**args, **extra)

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _document_inputs(self, request: Instance) -> tuple[str, list[PIL.Image.Image]]:
        """(context, RGB images) of a request; a document without images (or a bare 2-tuple request) gives none."""
        if len(request.args) < 6:
            return request.args[0], []
        context, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        images = [visual for visual in (visuals or []) if visual is not None]
        for image in images:
            if not isinstance(image, PIL.Image.Image):
                raise ValueError(f"convllava takes images only; task {task!r} gave a {type(image).__name__}.")
        return context, [image.convert("RGB") for image in images]

    def chat_prompt(self, context: str, num_images: int) -> str:
        """The Vicuna v1 prompt of one user turn: `<image>\\n` per image (unless `context` has them), then `context`."""
        if self.processor.image_token in context:
            content = context
        else:
            content = [{"type": "image"}] * num_images + [{"type": "text", "text": context}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def _model_inputs(self, prompts: list[str], images: list[PIL.Image.Image]):
        inputs = self.processor(
            images=images or None, text=prompts, padding=True, padding_side="left", return_tensors="pt"
        )
        return inputs.to(self.device)

    def _generation_settings(self, gen_kwargs: dict) -> tuple[list[str], dict]:
        """(stop strings, `generate` kwargs) of one request's generation kwargs."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        # sample only at a positive temperature, and not where the task says `do_sample: false` (e.g. MMVet's 0.2)
        temperature = float(gen_kwargs.get("temperature") or 0)
        if gen_kwargs.get("do_sample") is False:
            temperature = 0.0
        settings = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            "num_beams": int(gen_kwargs.get("num_beams") or 1),
            "do_sample": temperature > 0,
            "temperature": temperature if temperature > 0 else None,
            "top_p": gen_kwargs.get("top_p") if temperature > 0 else None,
        }
        if until:
            settings.update(stop_strings=until, tokenizer=self.tokenizer)
        return until, settings

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in batches of `batch_size` requests with equal generation kwargs, padded on the left."""
        groups = defaultdict(list)
        for index, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(index)
        answers: list[str | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="convllava generate")
        for indices in groups.values():
            indices.sort(key=lambda index: -len(requests[index].args[0]))
            until, settings = self._generation_settings(requests[indices[0]].args[1])
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                prompts, images = [], []
                for index in batch:
                    context, document_images = self._document_inputs(requests[index])
                    prompts.append(self.chat_prompt(context, len(document_images)))
                    images += document_images
                inputs = self._model_inputs(prompts, images)
                with torch.inference_mode():
                    output = self.model.generate(**inputs, **settings)
                texts = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                for index, text in zip(batch, texts):
                    for stop in until:
                        text = text.split(stop)[0]
                    answers[index] = text.strip()
                    self.cache_hook.add_partial("generate_until", requests[index].args[:2], answers[index])
                progress.update(len(batch))
        progress.close()
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """
        For each request: the negative log-likelihood of the continuation's tokens as the assistant's reply (after
        `ASSISTANT: `), summed, and whether greedy decoding would produce them. lmms-eval's multiple-choice scoring
        takes the argmin of this value (its models return a loss), so the likeliest choice wins.

        Each `(value, is_greedy)` pair travels in a `GenerationResult`: lmms-eval 0.7.3's evaluator turns any other
        non-string response into its `str()` (`unwrap_generation_output`), which breaks its likelihood scoring.
        """
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="convllava loglikelihood"):
            context, continuation = request.args[:2]
            if not isinstance(continuation, str):
                _, _, _, doc_id, task, split = request.args
                continuation = continuation(self.task_dict[task][split][doc_id])
            _, images = self._document_inputs(request)
            inputs = self._model_inputs([self.chat_prompt(context, len(images))], images)
            reply = continuation[1:] if continuation.startswith(" ") else continuation
            reply_ids = self.tokenizer(reply, add_special_tokens=False, return_tensors="pt")["input_ids"]
            reply_ids = reply_ids.to(self.device)
            prompt_length = inputs["input_ids"].shape[1]
            inputs["input_ids"] = torch.cat([inputs["input_ids"], reply_ids], dim=1)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            with torch.inference_mode():
                logits = self.model(**inputs).logits[0, prompt_length - 1 : -1].float()
            log_probs = torch.log_softmax(logits, dim=-1).gather(1, reply_ids[0, :, None])[:, 0]
            result = (-float(log_probs.sum()), bool((logits.argmax(dim=-1) == reply_ids[0]).all()))
            results.append(GenerationResult(text=result))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("convllava does not implement lmms-eval's multi-round generation.")
