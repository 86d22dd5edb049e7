"""Removing a spurious feature (the paper's Waterbirds experiment), for any decomposed classifier.

Rank components by a property given in words (``spurious_scores``: the spurious attribute's
descriptions against the label's), mean-ablate the top k (``mean_ablate``, exact: only the
ablated components change) with means from the training split and k chosen on a validation
split (``remove_spurious``), and compare with random components and an oracle ranking by
readout effect (``readout_ranking``).
"""
from .ablation import component_means, mean_ablate
from .groups import group_accuracies
from .pipeline import SpuriousRun, find_and_remove, varying
from .ranking import random_rankings, ranked, readout_ranking, spurious_scores
from .removal import Removal, Split, remove_spurious

__all__ = ["Removal", "Split", "SpuriousRun", "find_and_remove", "varying", "component_means", "group_accuracies", "mean_ablate", "random_rankings", "ranked",
           "readout_ranking", "remove_spurious", "spurious_scores"]
