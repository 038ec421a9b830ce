"""A torchvision that cannot load beside this torch makes `import convllava_hf` fail naming torchvision and the fix."""

import os
import subprocess
import sys


def test_import_names_a_torchvision_that_does_not_load_and_says_to_uninstall_it(tmp_path):
    shadow = tmp_path / "torchvision"
    shadow.mkdir()
    (shadow / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    finished = subprocess.run(
        [sys.executable, "-c", "import convllava_hf"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    assert finished.returncode == 1
    last_line = finished.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: convllava_hf cannot load: torchvision is installed but fails to import")
    assert "operator torchvision::nms does not exist" in last_line and "pip uninstall torchvision" in last_line
