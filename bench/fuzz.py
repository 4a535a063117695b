"""Fuzz every parser of client bytes with many more inputs than the test suite (issue 15).

Runs ``tests/test_fuzz.py`` under the hypothesis profile ``bench`` (random, not derandomized;
``--examples`` inputs per function parser, a quarter of that per end-to-end door, at least 40)
and reports, per parser: inputs tried, crashes (failing tests: must be 0) and the slowest
input's time. Writes ``bench/results/fuzz.json`` and prints a Markdown table.

    nice -n 19 .venv/bin/python bench/fuzz.py --examples 2000

The times are not speed claims (the machine may be shared; run it at any priority): they show
that no input makes a parser slow (no quadratic blow-up, no hang up to the test timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000,
                        help="inputs per function-level parser (end-to-end doors: a quarter)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stats_path, junit = Path(tmp) / "stats.json", Path(tmp) / "junit.xml"
        env = {**os.environ, "VOXGATE_FUZZ_PROFILE": "bench",
               "VOXGATE_FUZZ_EXAMPLES": str(args.examples), "VOXGATE_FUZZ_STATS": str(stats_path)}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-q",
                               "-p", "no:cacheprovider", f"--junitxml={junit}",
                               "-o", "timeout=3600"], cwd=ROOT, env=env)
        wall = time.monotonic() - started
        stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
        failures = _failures(junit)
    rows = [{"parser": name, "inputs": entry["inputs"], "crashes": entry["crashes"],
             "slowest_s": round(entry["slowest_s"], 4), "slowest_input": entry["slowest_input"],
             "crash_input": entry["crash_input"]} for name, entry in sorted(stats.items())]
    report = {"examples": args.examples, "wall_s": round(wall, 1), "pytest_exit": done.returncode,
              "hypothesis_profile": "bench", "parsers": rows, "failed_tests": failures}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(f"\n{len(rows)} parsers, {sum(r['inputs'] for r in rows)} inputs in {wall:.0f} s, "
          f"pytest exit {done.returncode}\n")
    print("| parser | inputs tried | crashes | slowest input |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['parser']} | {r['inputs']} | {r['crashes']} | {r['slowest_s']:.3f} s |")
    return done.returncode


def _failures(junit: Path) -> list[str]:
    """The failing tests of the run, each with the start of its message."""
    if not junit.is_file():
        return ["pytest wrote no report"]
    return [f"{case.get('name')}: {(failure.get('message') or '')[:300]}"
            for case in ET.parse(junit).iter("testcase")
            for failure in list(case.iter("failure")) + list(case.iter("error"))]


if __name__ == "__main__":
    sys.exit(main())
