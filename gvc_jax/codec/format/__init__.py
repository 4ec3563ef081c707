"""The .gvc format: bit I/O (``bits``), the container and its code tables (``bitstream``) and the
rank coding of atom subsets (``ranks``). Pure Python and numpy: nothing here imports JAX."""
