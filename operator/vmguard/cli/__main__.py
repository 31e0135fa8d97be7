"""``python -m vmguard.cli``: the ``vmguard`` command, run by this interpreter (the lab and
the tests start the operator and proxies this way, from a checkout)."""

import sys

from vmguard.cli.main import main

sys.exit(main())
