"""Run the whole suite: `python3 tests/run.py [-v] [NAME_SUBSTRING ...]`.

Prints a last line `N passed, N failed, N skipped` so a run that executed
nothing is visible. Exits 0 only if nothing failed and at least one test ran.
"""

import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def main(argv) -> int:
    verbose = "-v" in argv
    filters = [a for a in argv if not a.startswith("-")]
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    loader = unittest.TestLoader()
    discovered = loader.discover(HERE, pattern="test_*.py", top_level_dir=ROOT)
    tests = [t for t in _flatten(discovered) if not filters or any(f in t.id() for f in filters)]
    suite = unittest.TestSuite(tests)
    start = time.monotonic()
    result = unittest.TextTestRunner(verbosity=2 if verbose else 1, stream=sys.stderr).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    sys.stderr.flush()
    print(f"ran in {time.monotonic() - start:.1f} s")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
