"""Files shipped with the package (trained weights of the synthetic world's models)."""
