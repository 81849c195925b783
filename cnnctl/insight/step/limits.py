"""How much of each tensor and sum ``cnnctl step`` shows."""

FEW = 6  # values shown of each tensor
TINY = 64  # parameters: a network this small has every number shown
TERMS = 4  # terms shown of a sum over output positions
MAX_STEPS = 1000
