"""`python -m bench` (or `make bench`): run every bench/bench_*.py in turn, each in its own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    """Run each benchmark module with its default options; return the number that failed."""
    failed = []
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        print(f"\n=== bench.{path.stem} ===", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{path.stem}"], cwd=path.parents[1], check=False).returncode:
            failed.append(path.stem)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
