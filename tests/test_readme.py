"""The README is true: its numbers come from commands the tests run, or from the committed
analysis report (docs/report/, dated to the machine that made it).

The README's Python blocks run in tests/test_docs.py; this file checks its numbers.
"""

from __future__ import annotations

import io
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
REPORT = ROOT / "docs" / "report"

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(text.replace("−", "-"))


def _same(quoted: str, reported: str) -> bool:
    """The README quotes the report's number as the report prints it (1.598 is not 1.60),
    or the same value in the other notation (×290 for ×2.9e+02)."""
    if quoted == reported:
        return True
    return ("e" in quoted) != ("e" in reported) and float(quoted) == float(reported)


def _analysis_table_rows() -> list[tuple[str, str]]:
    section = README[README.index("## Analysis"):]
    section = section[:section.index("\n### ")]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[a-z-]+`", cells[0]):
            rows.append((cells[0].strip("`"), cells[2]))
    return rows


def test_the_analysis_table_lists_every_study_of_the_report():
    import analysis
    studies = [name for name, _ in _analysis_table_rows()]
    assert len(studies) == 8
    assert set(studies) < set(analysis.STUDIES)
    for name in analysis.STUDIES:       # the applications are in the table's last row
        assert f"`{name}`" in README


@pytest.mark.parametrize("study,claims", _analysis_table_rows())
def test_every_number_in_the_analysis_table_is_in_the_committed_report(study, claims):
    data = json.loads((REPORT / f"{study}.json").read_text())
    assert {"study", "params", "measured", "theory", "verdict"} <= set(data)
    assert data["study"] == study and data["params"]["seed"] == 0
    reported = _numbers(data["verdict"])
    missing = [x for x in _numbers(claims) if not any(_same(x, r) for r in reported)]
    assert not missing, f"{study}: the README quotes {missing}, not in the report's verdict"


def test_the_report_date_and_time_quoted_in_the_readme_are_the_committed_reports():
    text = (REPORT / "report.md").read_text()
    date = re.search(r"Generated (\d{4}-\d\d-\d\d)T", text).group(1)
    seconds = float(re.search(r"; ([\d.]+) s in all", text).group(1))
    setup = README[README.index("## Set up"):README.index("## Example (NumPy)")]
    assert f"{round(seconds)} s on the" in setup and date in setup
    assert f"on {date} on the 2-core" in README and f"{round(seconds)} s)" in README
    for study in _analysis_table_rows():
        assert (REPORT / f"{study[0]}.png").stat().st_size > 10_000


def test_the_demo_prints_the_numbers_the_readme_quotes():
    from arraynorm.demo import run_demo

    text = README[README.index("`python -m arraynorm.demo` trains"):]
    m = re.search(r"at loss ([\d.]+), accuracy ([\d.]+) with BN, and far higher without", text)
    assert m, "the README's demo sentence changed: update this test"
    plain_runs = re.findall(r"at loss ([\d.]+), accuracy ([\d.]+) \(spiking to ([\d.]+);", text)
    assert len(plain_runs) == 3, "the README's machines for the run without BN changed: update this test"
    plain, bn = run_demo(out=io.StringIO())            # the command's defaults (seed 0)
    assert f"{bn.final_loss:.4f}" == m.group(1)
    assert f"{bn.final_accuracy:.3f}" == m.group(2)
    # the run without BN is chaotic (the BLAS kernels' rounding decides where it ends, see
    # the README): what holds on every machine is the gap, here and in every quoted run
    assert plain.final_loss > 10 * bn.final_loss and plain.final_accuracy < bn.final_accuracy
    assert max(plain.curve) > plain.final_loss  # it spiked on the way
    for loss, acc, peak in plain_runs:
        assert float(loss) > 10 * bn.final_loss and float(acc) < bn.final_accuracy
        assert float(peak) > float(loss)


def test_the_benchmark_table_is_the_committed_runs_table():
    """The Benchmarks section's table is ``python -m benchmarks.table`` of the two runs it
    links (with and without the ``[jit]`` extra), and the chart it shows is the first run's."""
    from benchmarks.table import comparison_table

    section = README[README.index("## Benchmarks"):README.index("## Backend support")]
    links = re.findall(r"\(benchmarks/results/([\w.-]+-sizes)\.md\)", section)
    assert len(links) == 2 and links[1] == links[0].replace("-sizes", "-nojit-sizes"), links
    runs = [json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text()) for name in links]
    table = comparison_table(*runs)
    assert table in section
    assert f"(benchmarks/results/{links[0]}.png)" in section
    # the copy bandwidths the text quotes are the runs' own
    for run in runs:
        assert f"{run['bandwidth']['cpu']['gbps']:.1f} GB/s" in section
