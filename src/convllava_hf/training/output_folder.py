"""Where a training run writes: never over its own inputs or unrelated files; resume from a complete checkpoint."""

import json
import logging
import re
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
TRAINER_STATE_FILE = "trainer_state.json"


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
    """Whether `output_dir` holds a (finished or interrupted) Trainer run: a trainer state or checkpoint folders."""
    return (output_dir / TRAINER_STATE_FILE).is_file() or bool(checkpoints(output_dir))


def check_output_dir(output_dir: str, inputs: dict[str, str | None], overwrite: bool) -> None:
    """
    Refuse an `output_dir` that is one of the run's local `inputs` (option -> path) or lies inside one, and a
    non-empty `output_dir` that is not a training run's output unless `overwrite` (`--overwrite_output_dir`).
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
    if output.is_file():
        raise ValueError(f"--output {output_dir} is a file.")
    if output.is_dir() and any(output.iterdir()) and not is_training_output(output) and not overwrite:
        raise ValueError(
            f"--output {output_dir} is not empty and holds no training run to continue; pass --overwrite_output_dir "
            f"to write into it anyway."
        )


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """
    The checkpoint to resume from: for `latest` / `true`, the newest *complete* `checkpoint-N` of `output_dir`
    (incomplete ones, from a run killed while saving, are skipped with a warning); other values unchanged.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint.lower() not in ("latest", "true"):
        return resume_from_checkpoint
    found = checkpoints(Path(output_dir))
    incomplete = []
    for step, path in found:
        if is_complete(path, step):
            skipped = f" (skipping incomplete {', '.join(incomplete)})" if incomplete else ""
            logger.warning("Resuming from %s, the newest complete checkpoint%s.", path, skipped)
            return str(path)
        incomplete.append(path.name)
    if not found:
        raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint}: {output_dir} has no checkpoint.")
    raise ValueError(
        f"--resume_from_checkpoint {resume_from_checkpoint}: no complete checkpoint in {output_dir} (incomplete, "
        f"without a whole {TRAINER_STATE_FILE}: {', '.join(incomplete)})."
    )

