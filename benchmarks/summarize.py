"""Markdown table of a pytest-benchmark JSON file: median time per implementation and the
speed-up over the torch.linalg.svd pipeline of the same group.

    python benchmarks/summarize.py benchmarks/results/cpu.json
"""

import argparse
import json
from collections import defaultdict

BASELINE = "torch.linalg.svd pipeline"


def table(path: str) -> str:
    with open(path) as f:
        runs = json.load(f)["benchmarks"]
    groups = defaultdict(dict)
    for run in runs:
        groups[run["group"]][run["extra_info"]["implementation"]] = run["stats"]["median"]
    lines = ["| shape | implementation | median | vs torch.linalg.svd pipeline |", "|---|---|---|---|"]
    for group, medians in groups.items():
        baseline = medians.get(BASELINE)
        for name, median in sorted(medians.items(), key=lambda item: item[1]):
            speedup = f"{baseline / median:.1f}×" if baseline else "-"
            lines.append(f"| {group} | {name} | {median * 1e3:.2f} ms | {speedup} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="file written by pytest --benchmark-json")
    print(table(parser.parse_args().json))


if __name__ == "__main__":
    main()
