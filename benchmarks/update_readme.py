"""Copy the headline tables of benchmarks/results/*.md into the README's results section.

The README section between ``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced
by the clustering ARI and label-transfer tables, the per-stage diagnosis, the ablation ARI table, the batch page
and the speed summary, each with a link to its full results page. Run after the benchmark scripts (``run_all.py`` does).
"""

from __future__ import annotations

import re
from pathlib import Path

from common import RESULTS, ROOT

START, END = "<!-- results:start -->", "<!-- results:end -->"


def section(page: Path, headings: tuple[str, ...], level: str = "###") -> str:
    """The intro paragraph and the named ``##`` sections of a results page, demoted one level."""
    if not page.exists():
        return f"_{page.name} not generated yet._"
    text = page.read_text()
    body = text.split("\n", 1)[1].split("\n\nWritten by ", 1)[0]
    intro = body.split("\n## ", 1)[0].strip()
    chunks = re.split(r"\n(?=## )", body)
    kept = [c.strip().replace("## ", f"{level} ", 1) for c in chunks if any(c.strip().startswith(f"## {h}") for h in headings)]
    footer = text.strip().splitlines()[-1]
    link = f"Full tables: [{page.relative_to(ROOT)}]({page.relative_to(ROOT)})."
    return "\n\n".join(part for part in [intro, *kept, link, footer] if part)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    blocks = [
        "### Clustering quality (protocols U/S/T vs baselines)\n\n"
        + section(RESULTS / "clustering.md", ("ARI", "Label transfer"), "####"),
        "### Where the signal is lost (each stage of the model, K-means at K)\n\n"
        + section(RESULTS / "diagnose.md", ("ARI per stage",), "####"),
        "### Ablations\n\n" + section(RESULTS / "ablations.md", ("ARI", "Learned"), "####"),
        "### Several donors: `--batch-key`\n\n"
        + section(RESULTS / "batch.md", ("Cell-type ARI", "Batch NMI", "Protocol T by donor"), "####"),
        "### Speed and memory\n\n" + section(RESULTS / "speed.md",
                                              ("Inference", "`sccsa-infer", "Contention", "Data-parallel", "The autocorrelation", "Cold", "Training"), "####"),
    ]
    new = f"{START}\n" + "\n\n".join(blocks) + f"\n{END}"
    readme.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: new, text, flags=re.S))
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
