"""Content-addressed store: blobs, Merkle directories, their services, ingestion and FUSE.

Nothing here knows about Nix (that is ``nix_compat`` and ``tvix_store``). The pure data model
lives in ``digests``, ``path``, ``nodes``, ``directory``, ``directory_graph``, ``chunker``; the
IO shells are the ``*service`` packages, ``grpc`` and ``fs``.
"""
