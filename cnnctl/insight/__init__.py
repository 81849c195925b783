"""Seeing what a network does: the arithmetic of one training step, optimizers on 2-D surfaces."""
