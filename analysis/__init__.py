"""arraynorm.analysis — studies of normalization built on arraynorm and SciPy.

This package is reserved for the survey's analyses (scale invariance, Jacobian conditioning,
gradient flow through deep stacks, run as ``python -m analysis report``). None of them is
implemented yet: the package is declared so that ``pip install -e .`` installs the layout the
project's design fixes, and importing it provides nothing else.
"""
