"""Test-wide setup: make ``tests/`` importable and load the backend factory tables."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Filling the factory tables in backends.py is these modules' import side effect. The gRPC table
# is optional, but once its module exists an ImportError inside it must not be hidden.
importlib.import_module("backends_local")
if importlib.util.find_spec("backends_grpc") is not None:
    importlib.import_module("backends_grpc")

# Daemon fixtures (served, daemon_proc, short_dir) for tests/grpc and mounts over gRPC; a plugin
# module rather than a folder conftest, since `from conftest import` in one folder would pick up
# another folder's conftest.
pytest_plugins = ["daemon_helpers"]
