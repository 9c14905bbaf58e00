"""The RADIUS front as a worker-style process: `python -m workers.radius` is `pushauth radius`
(pushauth/radius/process.py)."""

from __future__ import annotations

import sys

from pushauth.radius.process import RADIUS

main = RADIUS.main

if __name__ == "__main__":
    sys.exit(main())
