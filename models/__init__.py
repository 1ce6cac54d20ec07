"""Generators, their samplers and the embedded world."""
