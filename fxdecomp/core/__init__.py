"""Data structures of the compiler: atoms (indices), terms (factor products), planning."""
