"""``python -m tests.reliability [--kills N] [--seed S] [--quick]``: the reliability report."""

import sys

from tests.reliability.reliability import main

sys.exit(main())
