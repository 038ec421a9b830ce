"""Write a folder completely in a hidden sibling, then move it into place: never a half-written output."""

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConversionError


def check_output(output: Path, force: bool) -> None:
    """Refuse an output that is a file, or a non-empty folder unless `force`."""
    output = output.resolve()
    if output.is_file() or output.is_symlink():
        raise ConversionError(f"--output {output} exists and is not a folder; refusing to replace it.")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ConversionError(f"--output {output} is not empty; pass --force to replace its contents.")


@contextmanager
def staged_output(output: Path, force: bool) -> Iterator[Path]:
    """
    Yield an empty staging folder next to `output`; when the block succeeds, it replaces `output` (whose old
    contents are deleted only then). When the block fails, the staging folder is deleted and `output` is untouched.
    """
    output = output.resolve()  # so that "." stages next to the folder, not inside it
    check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        yield staging
        check_output(output, force)
        staging.chmod(0o755)
        if output.exists():
            replaced = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent))
            output.rename(replaced / output.name)
            staging.rename(output)
            shutil.rmtree(replaced)
        else:
            staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
