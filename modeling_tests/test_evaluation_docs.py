"""docs/evaluation.md shows the same published numbers as the model cards, and a command for every benchmark."""

import re
from pathlib import Path

import pytest

from convllava_hf.conversion.model_card import GENERAL_BENCHMARKS, GROUNDING_BENCHMARKS, PUBLISHED_RESULTS

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
LMMS_EVAL_TASKS = ("mme", "mmbench_en_dev", "seedbench", "realworldqa", "mmmu_val", "mmvet", "textvqa_val",
                   "docvqa_val", "pope")  # fmt: skip


def published_columns(table_header: str) -> dict[int, list[str]]:
    """The published column of each resolution in the table under `table_header`, row by row."""
    lines = DOC.read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(table_header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return {resolution: [row[1 + 2 * column] for row in rows] for column, resolution in enumerate((768, 1024, 1536))}


@pytest.mark.skipif(not DOC.exists(), reason="docs/ is not part of this checkout")
def test_published_numbers_match_the_model_card():
    general = published_columns("| Benchmark (metric)")
    grounding = published_columns("| RefCOCO-style grounding")
    for resolution, (general_results, grounding_results) in PUBLISHED_RESULTS.items():
        assert general[resolution] == list(general_results)
        assert grounding[resolution] == list(grounding_results)
    assert len(general[768]) == len(GENERAL_BENCHMARKS) and len(grounding[768]) == len(GROUNDING_BENCHMARKS)


@pytest.mark.skipif(not DOC.exists(), reason="docs/ is not part of this checkout")
def test_every_benchmark_has_an_lmms_eval_command():
    commands = re.findall(r"^\$RUN --tasks (\S+)", DOC.read_text(), flags=re.MULTILINE)
    assert commands == list(LMMS_EVAL_TASKS)
