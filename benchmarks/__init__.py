"""caef benchmarks (``make bench``): caef's implementation of each costly step against the reference recipe.

Not tests: nothing here asserts a speed. See ``benchmarks/README.md``.
"""
