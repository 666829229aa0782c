"""Write the markdown note of benchmark runs again from their JSON (the note is a function of
it), e.g. after :mod:`benchmarks.report` learned to say more::

    python -m benchmarks.note benchmarks/results/RUN.json [MORE.json ...]
"""

from __future__ import annotations

import argparse
import json

from .report import markdown


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.note",
                                 description="Write the markdown note of benchmark runs from their JSON.")
    ap.add_argument("runs", nargs="+", metavar="RUN.json")
    for path in ap.parse_args(argv).runs:
        with open(path) as f:
            run = json.load(f)
        md = (path[:-len(".json")] if path.endswith(".json") else path) + ".md"
        with open(md, "w") as f:
            f.write(markdown(run))
        print(f"wrote {md}")


if __name__ == "__main__":
    main()
