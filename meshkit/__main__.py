"""`python -m meshkit ...`"""

import signal
import sys

# Ctrl-C while the modules below load exits 130 quietly, not with a KeyboardInterrupt traceback
# (main() does the same for the command's own modules). An ignored SIGINT (`meshkit ... &` in a
# script) stays ignored.
_QUIET_START = signal.getsignal(signal.SIGINT) is signal.default_int_handler
if _QUIET_START:
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

from meshkit.cli.main import main

if _QUIET_START:
    signal.signal(signal.SIGINT, signal.default_int_handler)

if __name__ == "__main__":
    sys.exit(main())
