"""Compiler passes, one per file, in the order ``compiler.PASSES`` runs them; each is
``run(state) -> state`` over one ``core.state.CompileState``:

trace (1) -> shapes (2) -> dataflow (3) -> axes (4) -> stream (5) -> affinity (6, reading runs
of pointwise ops with ``symbolic``) -> route (7) -> demand (8) -> expand (9) -> batch (10) ->
labels (11) -> granularity (12) -> codegen (13) -> hoist (14).

What a pass needs from an op it asks the op's rule (``fxdecomp/rules/``); none of them keeps a
table of ops."""
