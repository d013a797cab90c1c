"""``python -m postfix_rest_api_connector`` runs the same entry point as the console script."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
