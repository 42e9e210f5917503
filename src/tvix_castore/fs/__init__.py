"""The castore as a read-only filesystem (tvix ``castore/src/fs``).

``inodes.py`` (pure inode bookkeeping), ``root_nodes.py`` (what the top level holds),
``vfs.py`` (synchronous filesystem semantics over the services), ``fuse.py`` (the pyfuse3
adapter) and ``mount.py`` (mount lifecycle). Only ``fuse.py`` and ``mount.py`` import trio or
pyfuse3, so importing this package stays cheap.
"""
