"""Compiler passes, one per file, in the order ``compiler.decompose`` runs them:
trace -> shapes -> dataflow -> axes -> stream -> affinity -> expand -> labels -> granularity -> codegen."""
