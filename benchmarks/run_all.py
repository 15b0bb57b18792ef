"""Run every benchmark, then refresh the README's results section (several hours on 2 cores).

    python benchmarks/run_all.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=None, help="folder of labelled .h5ad files (default ../shared/data)")
    args = parser.parse_args()
    extra = ["--data", args.data] if args.data else []
    for script in ("clustering.py", "ablations.py", "speed.py"):
        subprocess.run([sys.executable, str(HERE / script), *extra], check=True)
    subprocess.run([sys.executable, str(HERE / "update_readme.py")], check=True)


if __name__ == "__main__":
    main()
