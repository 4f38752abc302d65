"""`python -m opengrok_dagster.cli`: the `opengrok` command."""

import sys

from opengrok_dagster.cli import main


sys.exit(main())
