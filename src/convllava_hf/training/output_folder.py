"""
Where a training run writes: never over its own inputs or unrelated files; resume from a complete checkpoint of the
same run.

Each run records its id in `--output`'s `convllava_run.json` when it starts, and in every checkpoint's
`trainer_state.json` (the `RunIdentity` callback's state), so that `--resume_from_checkpoint latest` takes the newest
checkpoint of the run last started there, never a newer one left by an earlier run.
"""

import json
import logging
import os
import re
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
TRAINER_STATE_FILE = "trainer_state.json"
RUN_FILE = "convllava_run.json"


class RunIdentity(TrainerCallback, ExportableState):
    """Stores the run id in the trainer state, so that every checkpoint names the run that wrote it."""

    def __init__(self, run_id: str = ""):
        self.run_id = run_id

    def state(self) -> dict:
        return {"args": {"run_id": self.run_id}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        # also when resuming from a checkpoint written before run ids existed (its state lacks this entry)
        state.stateful_callbacks[type(self).__name__] = self.state()


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The id of the run that wrote `checkpoint`, or None (unreadable, or written before run ids were recorded)."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
        return state["stateful_callbacks"][RunIdentity.__name__]["args"]["run_id"] or None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def last_run(output_dir: Path) -> dict | None:
    """`{"run_id", "started"}` of the run last started into `output_dir`, or None when none recorded it."""
    try:
        run = json.loads((output_dir / RUN_FILE).read_text())
        return run if isinstance(run.get("run_id"), str) else None
    except (OSError, ValueError, AttributeError):
        return None


def start_run(output_dir: str, resume: str | None, write: bool) -> str:
    """
    The id of this run: the resumed checkpoint's, else a new one. With `write` (the main process), record it in
    `output_dir` as the run last started there.
    """
    run_id = (checkpoint_run_id(Path(resume)) if resume else None) or uuid.uuid4().hex[:12]
    if write:
        output = Path(output_dir)
        output.mkdir(parents=True, exist_ok=True)
        previous = last_run(output)
        started = previous["started"] if previous and previous["run_id"] == run_id else None
        record = {"run_id": run_id, "started": started or datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with tempfile.NamedTemporaryFile("w", dir=output, prefix=f".{RUN_FILE}.", delete=False) as file:
            json.dump(record, file)
        os.chmod(file.name, 0o644)
        os.replace(file.name, output / RUN_FILE)
    return run_id


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """The `checkpoint-N` folders of a training output, newest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(path.name))]
    return sorted((step, path) for step, path in found if path.is_dir())[::-1]


def is_complete(checkpoint: Path, step: int) -> bool:
    """Whether the Trainer finished writing `checkpoint`: its `trainer_state.json`, written last, is whole."""
    try:
        return json.loads((checkpoint / TRAINER_STATE_FILE).read_text())["global_step"] == step
    except (OSError, ValueError, TypeError, KeyError):
        return False


def is_training_output(output_dir: Path) -> bool:
    """
    Whether `output_dir` holds a (finished, interrupted or just started) Trainer run: a trainer state, checkpoint
    folders or the run record, which the main process may already be writing while other processes check the folder.
    """
    return (
        (output_dir / TRAINER_STATE_FILE).is_file()
        or (output_dir / RUN_FILE).is_file()
        or any(path.name.startswith(f".{RUN_FILE}.") for path in output_dir.iterdir())
        or bool(checkpoints(output_dir))
    )


def check_output_dir(output_dir: str, inputs: dict[str, str | None], overwrite: bool) -> None:
    """
    Refuse an `output_dir` that is one of the run's local `inputs` (option -> path), lies inside one or holds one
    (the run would overwrite it, or rotate it away with `--save_total_limit`), and a non-empty `output_dir` that is
    not a training run's output unless `overwrite` (`--overwrite_output_dir`).
    """
    output = Path(output_dir).expanduser().resolve()
    for option, source in inputs.items():
        if source is None or not Path(source).expanduser().exists():
            continue  # not given, or a Hub id
        source_path = Path(source).expanduser().resolve()
        if output == source_path or source_path in output.parents:
            raise ValueError(
                f"--output {output_dir} would write into {option} {source}, overwriting the weights the run starts "
                f"from; choose another --output."
            )
        if output in source_path.parents:
            raise ValueError(
                f"{option} {source} lies inside --output {output_dir}: the run would overwrite it, or delete it when "
                f"rotating checkpoints; choose an --output outside it (or copy it out first)."
            )
    if output.is_file():
        raise ValueError(f"--output {output_dir} is a file.")
    if output.is_dir() and any(output.iterdir()) and not is_training_output(output) and not overwrite:
        raise ValueError(
            f"--output {output_dir} is not empty and holds no training run to continue; pass --overwrite_output_dir "
            f"to write into it anyway."
        )


def _describe(run: dict) -> str:
    return f"run {run['run_id']}, started {run['started']}"


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """
    The checkpoint to resume from: for `latest` / `true`, the newest *complete* `checkpoint-N` of `output_dir`
    (incomplete ones, from a run killed while saving, are skipped with a warning) written by the run last started
    there (when `output_dir` records it: checkpoints of earlier runs are never taken); other values unchanged.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint.lower() not in ("latest", "true"):
        return resume_from_checkpoint
    run = last_run(Path(output_dir))
    found, earlier = [], []
    for step, path in checkpoints(Path(output_dir)):
        run_id = checkpoint_run_id(path)
        if run and run_id != run["run_id"] and is_complete(path, step):
            earlier.append((path, run_id))
        else:
            found.append((step, path))
    ignored = f"; ignoring {', '.join(path.name for path, _ in earlier)} of earlier runs" if earlier else ""
    incomplete = []
    for step, path in found:
        if is_complete(path, step):
            skipped = f" (skipping incomplete {', '.join(incomplete)})" if incomplete else ""
            of_run = f" of the last run into {output_dir} ({_describe(run)})" if run else ""
            logger.warning("Resuming from %s, the newest complete checkpoint%s%s%s.", path, of_run, skipped, ignored)
            return str(path)
        incomplete.append(path.name)
    if earlier and not incomplete:
        named = ", ".join(f"{path.name} (run {run_id or 'unrecorded'})" for path, run_id in earlier)
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint}: the last run into {output_dir} ({_describe(run)}) "
            f"saved no checkpoint; the checkpoints there are from earlier runs: {named}. To continue one of those, "
            f"pass its folder, e.g. --resume_from_checkpoint {earlier[0][0]}."
        )
    if not found:
        raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint}: {output_dir} has no checkpoint.")
    raise ValueError(
        f"--resume_from_checkpoint {resume_from_checkpoint}: no complete checkpoint in {output_dir} (incomplete, "
        f"without a whole {TRAINER_STATE_FILE}: {', '.join(incomplete)}){ignored}."
    )
