"""``python -m tvix_store`` runs the CLI."""

import sys

from tvix_store.cli import main

sys.exit(main())
