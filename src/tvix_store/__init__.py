"""tvix-store: PathInfos (store paths -> castore roots + Nix metadata), NAR glue, CLI, daemon.

Builds on ``tvix_castore`` (content-addressed data) and ``nix_compat`` (Nix formats).
"""

__version__ = "0.1.0"
