"""Optimizers on a surface (``cnnctl optimizers``): every optimizer of the registry, built by ``create_optimizer``
from the ``optimizer`` config keys exactly as training builds it, moves one 1x2 weight ``(x, y)`` down a classic
2-D test function. The paths show what the training curves only hint at: where each update rule goes and how fast.

The surfaces
------------
- ``rosenbrock``: a curved, flat-bottomed valley (Rosenbrock 1960, started where he started it): easy to find,
  slow to follow. Its values span five decades, so its contours are log-spaced.
- ``saddle``: ``x^2 - y^2`` made bounded by ``y^4 / 2``: a saddle point at the origin between two minima. The start
  lies just off the ridge (y = 0.01), where the gradient pushing off it is tiny.
- ``ravine``: an ill-conditioned quadratic bowl, 50 times steeper across than along, where plain gradient descent
  zig-zags. It lies along an axis, the case that per-parameter rates (Adagrad, RMSProp, Adam) undo exactly.
- ``styblinski-tang``: four wells of unequal depth (Styblinski & Tang 1990); the start lies on the outer slope of a
  local well, so an optimizer that stops in the first well it meets misses the global one.

Each surface is a function of torch tensors that autograd differentiates; the gradient written by hand next to it
is held to autograd's by the tests, so the formula printed on the plot is the one descended.

Learning rates
--------------
One lr cannot serve every optimizer on every surface. SGD steps ``lr * gradient``: Rosenbrock's gradients reach
the hundreds, the saddle's stay near 1, so an lr that moves on one diverges on the other. Adagrad, RMSProp and Adam
divide by the gradient's running size and step about ``lr`` per coordinate whatever its scale, so their lr is a
distance. Each surface therefore carries its own lr per path (``Surface.lrs``), each optimizer at its best:
``default_lr`` tries ``LR_GRID`` (1e-4, 3e-4, 1e-3, ... 1) and keeps the lr with which the path settles soonest,
within ``TOLERANCE`` of the minimum it ends in and staying there, in the default ``STEPS``. A local minimum counts,
so no optimizer is rewarded for a lucky leap into the global well; where no lr settles, the lowest final loss wins.
``--set optimizer.lr=V`` sets one lr for every path instead.

What is drawn
-------------
One PNG with a panel per surface (paths over the contours, start, minima) and one GIF per surface of
``FRAMES`` frames (fewer only for fewer steps): frame k of n shows the paths up to step
``max(k, round(steps * (k / (n - 1))^2))`` (``frame_steps``), each frame ``FRAME_MS`` long and the last held
``HOLD_MS``.
"""

from cnnctl.insight.surfaces.command import optimizers_on_surfaces
from cnnctl.insight.surfaces.descent import default_lr, descend, lines_for, optimizer_config, summarize
from cnnctl.insight.surfaces.functions import SURFACES
from cnnctl.insight.surfaces.limits import FRAMES, TOLERANCE
from cnnctl.insight.surfaces.pictures import frame_steps
from cnnctl.insight.surfaces.rules import RULES
from cnnctl.insight.surfaces.text import format_report

__all__ = ["FRAMES", "RULES", "SURFACES", "TOLERANCE", "default_lr", "descend", "format_report", "frame_steps",
           "lines_for", "optimizer_config", "optimizers_on_surfaces", "summarize"]
