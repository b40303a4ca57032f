"""The shipped Hydra configuration tree (model/, dataset/, algorithm/, ...)."""
