"""The original-tiny fixture is the ground truth: every file must be byte-identical to the pinned checksums."""

import hashlib

from tiny_models import FIXTURE_DIR

MANIFEST = FIXTURE_DIR.with_name("original-tiny.sha256")


def _pinned_checksums() -> dict[str, str]:
    entries = [line.split(maxsplit=1) for line in MANIFEST.read_text().splitlines() if line.strip()]
    return {path.strip(): digest for digest, path in entries}


def test_fixture_files_match_the_pinned_sha256_manifest():
    pinned = _pinned_checksums()
    assert len(pinned) == 17, "the manifest lists every file of the original-tiny fixture"
    actual = {
        path.relative_to(FIXTURE_DIR).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in FIXTURE_DIR.rglob("*")
        if path.is_file()
    }
    assert sorted(actual) == sorted(pinned), "files were added to or removed from the fixture"
    changed = [path for path, digest in pinned.items() if actual[path] != digest]
    assert not changed, f"fixture files differ from their pinned checksums: {changed}"
