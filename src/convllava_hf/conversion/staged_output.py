"""
Write a folder completely in a hidden sibling, then move it into place: never a half-written or a missing output.

Each run works in hidden sibling folders of the output, `.NAME.partial-*` (the new folder being written) and
`.NAME.replaced-*` (the old folder during a `--force` replacement). Each holds `owner.json` (host and process id)
and the folder itself under the output's name. A later run removes those of dead processes on this host, putting an
old folder back in place first if the replacement was cut short, and names any other it finds.
"""

import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConversionError

logger = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
WORK_KINDS = ("partial", "replaced")


def check_output(output: Path, force: bool) -> None:
    """Refuse an output that is a file, below a file, or a non-empty folder unless `force`."""
    output = output.resolve()
    if output.is_file() or output.is_symlink():
        raise ConversionError(f"--output {output} exists and is not a folder; refusing to replace it.")
    existing = next(folder for folder in output.parents if folder.exists())
    if not existing.is_dir():
        raise ConversionError(f"--output {output} cannot be created: {existing} is a file.")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ConversionError(f"--output {output} is not empty; pass --force to replace its contents.")


def _owner_is_dead(work_folder: Path) -> bool | None:
    """True / False for a work folder of this host whose process is gone / alive; None when it is not ours."""
    try:
        owner = json.loads((work_folder / OWNER_FILE).read_text())
        pid, host = int(owner["pid"]), owner["host"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if host != socket.gethostname():
        return None
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def recover_interrupted_runs(output: Path) -> None:
    """
    Tidy the work folders that interrupted runs left next to `output`: an old folder whose `--force` replacement
    was cut short goes back in place, the rest of a dead run is deleted. Refuses to go on while a live run writes
    `output`; folders it cannot attribute (another host, no owner file) are named in a warning and kept.
    """
    output = output.resolve()
    if not output.parent.is_dir():
        return
    for kind in WORK_KINDS:
        for folder in sorted(output.parent.glob(f".{output.name}.{kind}-*")):
            dead = _owner_is_dead(folder)
            if dead is None:
                logger.warning("%s was not left by a convllava-convert on this machine; delete it if unused.", folder)
            elif not dead:
                raise ConversionError(
                    f"Another convllava-convert is writing --output {output} (its work folder: {folder}); wait "
                    f"for it to finish, or delete that folder if no such process is running."
                )
            else:
                old = folder / output.name
                if kind == "replaced" and old.is_dir() and not output.exists():
                    old.rename(output)
                    logger.warning("Restored %s from a --force replacement that was interrupted.", output)
                shutil.rmtree(folder)
                logger.warning("Removed %s, left by an interrupted conversion.", folder)


def _work_folder(output: Path, kind: str) -> Path:
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{output.name}.{kind}-", dir=output.parent))
        (folder / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    except OSError as error:
        raise ConversionError(f"Cannot write into {output.parent}: {error}") from error
    return folder


def _replace(output: Path, staged: Path) -> None:
    """Move `staged` to `output`; an existing `output` is kept in a work folder until the new one is in place."""
    if not output.exists():
        staged.rename(output)
        return
    holder = _work_folder(output, "replaced")
    output.rename(holder / output.name)
    try:
        staged.rename(output)
    except BaseException:
        (holder / output.name).rename(output)
        shutil.rmtree(holder)
        raise
    shutil.rmtree(holder)


@contextmanager
def staged_output(output: Path, force: bool, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """
    Yield an empty staging folder next to `output`; when the block succeeds (and `check(staging)` after it, if
    given), it replaces `output`, whose old contents are deleted only then. When either fails, the staging folder
    is deleted and `output` is untouched.
    """
    output = output.resolve()  # so that "." stages next to the folder, not inside it
    check_output(output, force)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConversionError(f"Cannot create the folder of --output {output}: {error}") from error
    work_folder = _work_folder(output, "partial")
    staging = work_folder / output.name
    try:
        staging.mkdir(mode=0o755)
        yield staging
        if check is not None:
            check(staging)
        check_output(output, force)
        _replace(output, staging)
    finally:
        shutil.rmtree(work_folder, ignore_errors=True)
