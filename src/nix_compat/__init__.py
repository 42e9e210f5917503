"""Pure Nix formats: nixbase32, store paths, hashes, NAR and narinfo.

Nothing in this package performs IO or imports anything else of ours; inputs are bytes,
strings and ``read(n)`` callables, outputs are values and byte iterators (tvix's nix-compat).
"""
