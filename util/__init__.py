"""The layer below the six scripts: what makes them robust, none of the paper's method.

Each module holds one thing; none imports a script (they build on this package, never the
other way round).
"""
