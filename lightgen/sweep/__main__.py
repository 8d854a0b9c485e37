"""``python -m lightgen.sweep --plan PLAN.json --parent-run-id ID``: a sweep worker (``lightgen.sweep.worker``),
behind the studio's error boundary. The launcher spawns it; ``… worker NAME --preset P`` plans by itself."""

import sys

from lightgen.errors import run_guarded
from lightgen.sweep.worker import _worker_main

try:
    sys.exit(run_guarded(_worker_main, sys.argv[1:]))
except KeyboardInterrupt:  # Ctrl-C / the launcher's SIGTERM: the run is KILLED, its checkpoint kept;
    sys.exit(130)  # the launcher says so in one line, so no traceback here
