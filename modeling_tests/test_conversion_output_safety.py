"""No lost or half-written conversion output: killed runs, `--force` replacement cut short, failed `--verify`."""

import errno
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from convllava_hf.conversion import ConversionError, convert_convllava, safetensors_writer, staged_output
from test_conversion_checkpoints import convert, original_llm_state, write_llm
from tiny_models import FIXTURE_DIR

REPOSITORY = Path(__file__).resolve().parents[1]

#: Runs the converter CLI in a child process that is killed (os._exit, no clean-up) at one point of its work.
KILLED_CONVERTER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from convllava_hf.conversion import convert_convllava, safetensors_writer

    point = sys.argv.pop(1)
    if point == "while-writing":
        def write_shard(path, shard):
            path.write_bytes(b"half a shard")
            os._exit(9)
        safetensors_writer.write_shard = write_shard
    else:  # between moving the old output aside and moving the new one in
        real_rename = Path.rename
        def rename(self, target):
            result = real_rename(self, target)
            if ".replaced-" in str(target):
                os._exit(9)
            return result
        Path.rename = rename
    sys.exit(convert_convllava.main(sys.argv[1:]))
    """
)


def run_killed(point: str, output: Path, *extra: str) -> None:
    arguments = ["--llm", str(FIXTURE_DIR / "llm"), "--vision", str(FIXTURE_DIR / "vision"), "--output", str(output)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-c", KILLED_CONVERTER, point, *arguments, *extra],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 9, result.stderr


def siblings(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_killed_conversion_leaves_a_partial_folder_that_the_next_run_removes(tmp_path, caplog):
    run_killed("while-writing", tmp_path / "out")
    left = [name for name in siblings(tmp_path) if name.startswith(".out.partial-")]
    assert len(left) == 1 and siblings(tmp_path) == left
    with caplog.at_level(logging.WARNING):
        convert(FIXTURE_DIR / "llm", tmp_path / "out")
    assert siblings(tmp_path) == ["out"]
    assert any(left[0] in record.getMessage() and "Removed" in record.getMessage() for record in caplog.records)


def test_a_partial_folder_of_a_running_conversion_is_kept_and_named(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        work_folder = tmp_path / ".out.partial-running"
        (work_folder / "out").mkdir(parents=True)
        (work_folder / "owner.json").write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
        with pytest.raises(ConversionError, match=f"Another convllava-convert.*{work_folder}"):
            convert(FIXTURE_DIR / "llm", tmp_path / "out")
        assert (work_folder / "out").is_dir()
    finally:
        live.kill()
        live.wait()


def test_an_unattributable_partial_folder_is_kept_and_named_in_a_warning(tmp_path, caplog):
    stranger = tmp_path / ".out.partial-abc123"
    stranger.mkdir()
    (stranger / "model.safetensors").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        convert(FIXTURE_DIR / "llm", tmp_path / "out")
    assert (stranger / "model.safetensors").is_file()
    assert any(str(stranger) in record.getMessage() for record in caplog.records)


def test_force_keeps_the_old_output_until_the_new_one_is_in_place_and_a_crash_in_between_is_recovered(tmp_path, caplog):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    run_killed("between-renames", output, "--force")
    assert not output.exists()  # killed in the window: the old folder is aside, not lost
    (holder,) = [path for path in tmp_path.iterdir() if path.name.startswith(".out.replaced-")]
    assert (holder / "out" / "keep.txt").read_text() == "precious"

    with caplog.at_level(logging.WARNING), pytest.raises(ConversionError, match="--force"):
        convert(FIXTURE_DIR / "llm", output)  # the next run puts it back, then refuses to replace it without --force
    assert siblings(tmp_path) == ["out"] and (output / "keep.txt").read_text() == "precious"
    assert any("Restored" in record.getMessage() for record in caplog.records)
    convert(FIXTURE_DIR / "llm", output, force=True)
    assert siblings(tmp_path) == ["out"] and (output / "config.json").is_file()


def test_failed_verification_publishes_nothing_and_keeps_the_old_output(tmp_path, capsys):
    state = original_llm_state()
    state["model.norm.weight"] = torch.full_like(state["model.norm.weight"], float("nan"))
    llm = write_llm(tmp_path / "llm", state, "safetensors-single")
    arguments = ["--llm", str(llm), "--vision", str(FIXTURE_DIR / "vision"), "--verify"]
    assert convert_convllava.main([*arguments, "--output", str(tmp_path / "new")]) == 2
    assert "non-finite logits" in capsys.readouterr().err
    assert siblings(tmp_path) == ["llm"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("precious")
    assert convert_convllava.main([*arguments, "--output", str(tmp_path / "old"), "--force"]) == 2
    assert siblings(tmp_path) == ["llm", "old"] and siblings(tmp_path / "old") == ["keep.txt"]


def this_process_owner(**changes) -> dict:
    """An owner file as this process would write it, with `changes`."""
    return {**staged_output._this_process(), **changes}


def leave_work_folder(parent: Path, owner: dict, age_s: float = 0) -> Path:
    work_folder = parent / ".out.partial-left"
    (work_folder / "out").mkdir(parents=True, exist_ok=True)
    (work_folder / "out" / "model.safetensors").write_bytes(b"half")
    (work_folder / "owner.json").write_text(json.dumps(owner))
    for path in [work_folder / "out" / "model.safetensors", work_folder / "out", work_folder / "owner.json"]:
        os.utime(path, (time.time() - age_s, time.time() - age_s))
    os.utime(work_folder, (time.time() - age_s, time.time() - age_s))
    return work_folder


def test_a_work_folder_of_a_reused_pid_such_as_a_containers_pid_1_is_removed(tmp_path, caplog):
    """The owner's PID is alive, but it started at another time: another process, the conversion is gone."""
    work_folder = leave_work_folder(tmp_path, this_process_owner(pid=1, start_time="123456789"))
    with caplog.at_level(logging.WARNING):
        convert(FIXTURE_DIR / "llm", tmp_path / "out")
    assert siblings(tmp_path) == ["out"] and f"Removed {work_folder}" in caplog.text


@pytest.mark.parametrize("elsewhere", [{"host": "another-host"}, {"pid_namespace": "pid:[1]", "start_time": None}])
def test_an_owner_that_cannot_be_checked_is_stale_once_its_folder_is_old(tmp_path, caplog, elsewhere):
    work_folder = leave_work_folder(tmp_path, this_process_owner(pid=1, **elsewhere))
    with pytest.raises(ConversionError, match=rf"process 1 on host .*delete its work folder: rm -r {work_folder}$"):
        convert(FIXTURE_DIR / "llm", tmp_path / "out")
    leave_work_folder(tmp_path, this_process_owner(pid=1, **elsewhere), age_s=staged_output.STALE_AFTER_S + 60)
    with caplog.at_level(logging.WARNING):
        convert(FIXTURE_DIR / "llm", tmp_path / "out")
    assert siblings(tmp_path) == ["out"] and f"Removed {work_folder}" in caplog.text


def test_a_full_disk_gives_one_line_naming_the_output_and_the_space_needed(tmp_path, monkeypatch, capsys):
    def full_disk(path, shard):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(safetensors_writer, "write_shard", full_disk)
    arguments = ["--llm", str(FIXTURE_DIR / "llm"), "--vision", str(FIXTURE_DIR / "vision"), "--output"]
    assert convert_convllava.main([*arguments, str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: No space left on the device of --output {tmp_path}/out")
    assert re.search(r"needs about 0\.0\d GB, [\d.]+ GB are free", error) and siblings(tmp_path) == []


def test_a_full_disk_under_safetensors_is_reported_as_a_full_disk(tmp_path, monkeypatch, capsys):
    """safetensors raises its own error type, not an OSError, when the disk fills: it still reads as a full disk."""

    def full_disk(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors_writer, "save_file", full_disk)
    arguments = ["--llm", str(FIXTURE_DIR / "llm"), "--vision", str(FIXTURE_DIR / "vision"), "--output"]
    assert convert_convllava.main([*arguments, str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith(f"error: No space left on the device of --output {tmp_path}/out") and siblings(tmp_path) == []
    )


def test_converted_files_follow_the_umask_like_save_pretrained(tmp_path):
    old = os.umask(0o022)
    try:
        convert(FIXTURE_DIR / "llm", tmp_path / "out")
    finally:
        os.umask(old)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in (tmp_path / "out").iterdir()}
    assert set(modes.values()) == {"0o644"}, modes
