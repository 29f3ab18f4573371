"""Run every benchmark (bench/bench_*.py) in turn: `make bench`.

Benchmarks print ratios measured side by side in one run; they are not tests.
Run one with `python bench/bench_NAME.py`.
"""
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    only = sys.argv[1:]
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        if only and not any(o in path.stem for o in only):
            continue
        print(f"\n=== {path.stem} ===", flush=True)
        # Each benchmark parses its own command line: give it none of run.py's words.
        argv, sys.argv = sys.argv, [str(path)]
        try:
            runpy.run_path(str(path), run_name="__main__")
        finally:
            sys.argv = argv
