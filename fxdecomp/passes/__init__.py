"""Compiler passes, one per file, in the order ``compiler.PASSES`` runs them; each is
``run(state) -> state`` over one ``core.state.CompileState``:
trace (1) -> shapes (2) -> dataflow (3) -> axes (4) -> stream (5) -> affinity (6, with
symbolic) -> expand (7, which runs demand, 7a, first) -> batch (8) -> labels (9) ->
granularity (10) -> codegen (11) -> hoist (12). ``where`` holds helpers that name a node's
module in labels and messages."""
