"""Run every study of studies.py by number (each resumes where it stopped), then write the doc.

python experiments/run_all.py            # all of them
python experiments/run_all.py s1 s4      # some, by prefix
"""

from __future__ import annotations

import importlib
import sys
import time

from studies import by_number


def chosen(argv: list[str]) -> list[str]:
    """The studies' modules to run, by number (later studies reuse earlier ones' RUNs): all, or
    those whose module name starts with one of ``argv``."""
    names = [s.module for s in by_number()]
    return [s for s in names if not argv or any(s.startswith(a) for a in argv)]


def main(argv: list[str]) -> int:
    for name in chosen(argv):
        t = time.perf_counter()
        print(f"=== {name}", flush=True)
        importlib.import_module(name).main()
        print(f"=== {name} done in {time.perf_counter() - t:.0f} s", flush=True)
        importlib.import_module("report").main()  # the doc is current after every study
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
