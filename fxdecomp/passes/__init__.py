"""Compiler passes, one per file, in the order ``compiler.decompose`` runs them:
trace (1) -> shapes (2) -> dataflow (3) -> axes (4) -> stream (5) -> affinity (6, with
symbolic) -> expand (7, which runs demand, 7a, first) -> labels (8) -> granularity (9) ->
codegen (10). ``where`` holds helpers that name a node's module in labels and messages."""
