"""The numbers a descent and its pictures are held to (the package docstring says why each)."""

STEPS = 1000
MAX_STEPS = 10_000
TOLERANCE = 1e-3  # "steps to tol": the first step with f - f* <= TOLERANCE
ARRIVED = 0.05  # a run ends in a minimum when its last point lies this close to it
BOUND = 1e6  # a point this far from the origin, or a loss that is not finite, has diverged
FRAMES = 60
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
FRAME_MS, HOLD_MS = 80, 1500
SOURCE = "cnnctl optimizers"
PNG_NAME = "optimizer-paths.png"
PANEL = (8.0, 4.8)  # inches per surface and its legend, in the PNG and (at GIF_DPI) in the GIF
GIF_DPI = 80
