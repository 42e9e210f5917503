"""NAR glue between castore and Nix: rendering nodes to NAR, hashing NARs, ingesting NARs.

``renderer`` streams a node's NAR, ``calculation`` gives its size and SHA-256, ``ingest``
parses a NAR stream into blobs and Directories (tvix ``store/src/nar``).
"""

from __future__ import annotations
