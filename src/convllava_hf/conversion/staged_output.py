"""
Write a folder completely in a hidden sibling, then move it into place: never a half-written or a missing output.

Each run works in hidden sibling folders of the output, `.NAME.partial-*` (the new folder being written) and
`.NAME.replaced-*` (the old folder during a `--force` replacement). Each holds `owner.json` (host, boot id, PID
namespace, process id and start time) and the folder itself under the output's name. A later run removes those of
dead processes, putting an old folder back in place first if the replacement was cut short. An owner it cannot check
(another host or container, an older owner file) counts as dead once nothing in its folder changed for
`STALE_AFTER_S`; until then the run stops, naming the folder to delete if no conversion is running.
"""

import errno
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConversionError

logger = logging.getLogger(__name__)

OWNER_FILE = "owner.json"
WORK_KINDS = ("partial", "replaced")
#: A work folder whose owner cannot be checked, and in which nothing changed for this long, was left by a dead run
#: (a live conversion writes its shards continuously).
STALE_AFTER_S = 30 * 60


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


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as file:
            return file.readline().strip()
    except OSError:
        return None


def _process_start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), which tells a reused PID apart."""
    stat = _read_first_line(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _this_process() -> dict:
    """What identifies this process across hosts, reboots and containers (PID namespaces)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": _pid_namespace(),
        "start_time": _process_start_time(os.getpid()),
    }


def _last_change(folder: Path) -> float:
    """The newest modification time of `folder` and everything in it."""
    times = [folder.stat().st_mtime]
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            try:
                times.append(os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return max(times)


def _owner_is_dead(work_folder: Path) -> bool | None:
    """
    True / False for a work folder whose process is gone / alive, None when it has no readable owner file. An owner
    that cannot be checked from here (another host, boot or PID namespace, e.g. a container's PID 1) is alive until
    nothing in its folder changed for `STALE_AFTER_S`.
    """
    try:
        owner = json.loads((work_folder / OWNER_FILE).read_text())
        pid, host = int(owner["pid"]), owner["host"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    here = _this_process()
    legacy = "boot_id" not in owner  # an owner file of an older version: host and PID only
    same_boot_and_namespace = all(here[key] and owner.get(key) == here[key] for key in ("boot_id", "pid_namespace"))
    if host == here["host"] and (legacy or same_boot_and_namespace):  # the PID means the same here
        if owner.get("start_time"):
            return _process_start_time(pid) != owner["start_time"]  # gone, or the PID now names another process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
    return time.time() - _last_change(work_folder) > STALE_AFTER_S


def recover_interrupted_runs(output: Path) -> None:
    """
    Tidy the work folders that interrupted runs left next to `output`: an old folder whose `--force` replacement
    was cut short goes back in place, the rest of a dead run is deleted. Refuses to go on while a live run writes
    `output` (naming the folder to delete if it is not running); folders without an owner file are named in a
    warning and kept.
    """
    output = output.resolve()
    if not output.parent.is_dir():
        return
    for kind in WORK_KINDS:
        for folder in sorted(output.parent.glob(f".{output.name}.{kind}-*")):
            dead = _owner_is_dead(folder)
            if dead is None:
                logger.warning("%s was not left by a convllava-convert; delete it if unused.", folder)
            elif not dead:
                raise ConversionError(
                    f"Another convllava-convert is writing --output {output} ({_owner_note(folder)}); wait for it "
                    f"to finish, or, if no conversion is running, delete its work folder: rm -r {folder}"
                )
            else:
                old = folder / output.name
                if kind == "replaced" and old.is_dir() and not output.exists():
                    old.rename(output)
                    logger.warning("Restored %s from a --force replacement that was interrupted.", output)
                shutil.rmtree(folder)
                logger.warning("Removed %s, left by an interrupted conversion.", folder)


def _owner_note(folder: Path) -> str:
    owner = json.loads((folder / OWNER_FILE).read_text())
    return f"process {owner['pid']} on host {owner['host']!r}, work folder {folder}"


def _work_folder(output: Path, kind: str) -> Path:
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{output.name}.{kind}-", dir=output.parent))
        (folder / OWNER_FILE).write_text(json.dumps(_this_process()))
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


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


@contextmanager
def staged_output(
    output: Path, force: bool, check: Callable[[Path], None] | None = None, size: int | None = None
) -> Iterator[Path]:
    """
    Yield an empty staging folder next to `output`; when the block succeeds (and `check(staging)` after it, if
    given), it replaces `output`, whose old contents are deleted only then. When either fails, the staging folder
    is deleted and `output` is untouched. A full disk raises `ConversionError` naming the output and `size` (the
    bytes the folder needs, about).
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
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        shutil.rmtree(work_folder, ignore_errors=True)
        needed = f"needs about {_gigabytes(size)}, " if size else ""
        free = _gigabytes(shutil.disk_usage(output.parent).free)
        raise ConversionError(
            f"No space left on the device of --output {output}: the converted model {needed}{free} are free in "
            f"{output.parent} (nothing was written; the old output, if any, is untouched)."
        ) from error
    finally:
        shutil.rmtree(work_folder, ignore_errors=True)
