"""Weights files shipped with the package and their manifest (see zoo.weights)."""
