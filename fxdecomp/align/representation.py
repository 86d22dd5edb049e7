"""``representation(model)``: the model's features, not its logits (``fxdecomp.adapters.representation``,
below the store, which decomposes it too); re-exported here, where CompAlign's users look for it."""
from ..adapters.representation import representation

__all__ = ["representation"]
