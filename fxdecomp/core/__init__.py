"""Data structures of the compiler, below the passes and the rules: atoms (indices), terms
(factor products), planning; the compile state the passes hand on (``state``, ``ir``), the
context every rule hook receives (``context``), the steps (``step``), and what a node is
(``shape``, ``where``)."""
