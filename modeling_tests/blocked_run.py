"""
Run as a script, runs a Python module as `python -m MODULE ARGS...` would, in a process where `convllava_hf` cannot be
imported (an import blocker on `sys.meta_path`): a tool's own command line, seeing only stock classes.
Usage: `python blocked_run.py MODULE [ARGS...]`.
"""

import runpy
import sys

from remote_code_worker import BlockConvLlavaHf, package_is_importable


def main() -> None:
    sys.meta_path.insert(0, BlockConvLlavaHf())
    assert not package_is_importable()
    module, *arguments = sys.argv[1:]
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
