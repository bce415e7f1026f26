"""Console scripts: thin ``@hydra.main`` entry points."""
