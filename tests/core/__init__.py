"""memoir_core, the library: the method, its parts, its public surface and import graph."""
