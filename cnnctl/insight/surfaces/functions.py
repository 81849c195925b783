"""The surfaces: classic 2-D test functions, each with its gradient written by hand (held to autograd's by the tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cnnctl.registry import Registry

if TYPE_CHECKING:
    pass


def rosenbrock(x: Any, y: Any) -> Any:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rosenbrock_grad(x: Any, y: Any) -> tuple[Any, Any]:
    return -2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)


def saddle(x: Any, y: Any) -> Any:
    return x**2 - y**2 + y**4 / 2


def saddle_grad(x: Any, y: Any) -> tuple[Any, Any]:
    return 2 * x, -2 * y + 2 * y**3


def ravine(x: Any, y: Any) -> Any:
    return 0.1 * x**2 + 5 * y**2


def ravine_grad(x: Any, y: Any) -> tuple[Any, Any]:
    return 0.2 * x, 10 * y


def styblinski_tang(x: Any, y: Any) -> Any:
    return (x**4 - 16 * x**2 + 5 * x + y**4 - 16 * y**2 + 5 * y) / 2


def styblinski_tang_grad(x: Any, y: Any) -> tuple[Any, Any]:
    return (4 * x**3 - 32 * x + 5) / 2, (4 * y**3 - 32 * y + 5) / 2


_ST_GLOBAL, _ST_LOCAL = -2.903534027771178, 2.746802770990838  # the roots of 4t^3 - 32t + 5 = 0 that are minima


@dataclass(frozen=True)
class Surface:
    """A 2-D test function, where its descent starts and where its minima are."""

    name: str
    formula: str  # plain text, for the terminal
    tex: str  # matplotlib mathtext, for the plot
    loss: Callable[[Any, Any], Any]  # f(x, y) on tensors or arrays: autograd differentiates this one
    grad: Callable[[Any, Any], tuple[Any, Any]]  # the gradient by hand, held to autograd's by the tests
    start: tuple[float, float]
    global_minima: tuple[tuple[float, float], ...]
    box: tuple[float, float, float, float]  # x0, x1, y0, y1 of the plot
    lrs: dict[str, float] = field(hash=False)  # the default lr of each optimizer here (module docstring)
    local_minima: tuple[tuple[float, float], ...] = ()
    log_levels: bool = False
    convex: bool = False

    @property
    def f_min(self) -> float:
        return float(self.loss(*self.global_minima[0]))


SURFACES = Registry("surface")
for _surface in (
    Surface("rosenbrock", "f(x, y) = (1 - x)^2 + 100 (y - x^2)^2", r"$(1-x)^2 + 100\,(y-x^2)^2$",
            rosenbrock, rosenbrock_grad, (-1.2, 1.0), ((1.0, 1.0),), (-2.0, 2.0, -1.0, 3.0),
            {"sgd momentum=0": 0.003, "sgd": 0.003, "adagrad": 1.0, "rmsprop momentum=0": 0.01, "rmsprop": 0.003,
             "adam": 0.3, "adamw": 0.3}, log_levels=True),
    Surface("saddle", "f(x, y) = x^2 - y^2 + y^4 / 2", r"$x^2 - y^2 + y^4/2$",
            saddle, saddle_grad, (-1.8, 0.01), ((0.0, 1.0), (0.0, -1.0)), (-2.0, 2.0, -1.6, 1.6),
            {"sgd momentum=0": 0.3, "sgd": 0.1, "adagrad": 1.0, "rmsprop momentum=0": 0.03, "rmsprop": 0.003,
             "adam": 0.3, "adamw": 0.3}),
    Surface("ravine", "f(x, y) = 0.1 x^2 + 5 y^2", r"$0.1\,x^2 + 5\,y^2$",
            ravine, ravine_grad, (-4.5, 1.0), ((0.0, 0.0),), (-5.0, 5.0, -2.0, 2.0),
            {"sgd momentum=0": 0.1, "sgd": 0.03, "adagrad": 1.0, "rmsprop momentum=0": 0.01, "rmsprop": 0.003,
             "adam": 0.3, "adamw": 0.3}, convex=True),
    Surface("styblinski-tang", "f(x, y) = (x^4 - 16 x^2 + 5 x + y^4 - 16 y^2 + 5 y) / 2",
            r"$(x^4 - 16x^2 + 5x + y^4 - 16y^2 + 5y)\,/\,2$",
            styblinski_tang, styblinski_tang_grad, (-4.6, 4.0), ((_ST_GLOBAL, _ST_GLOBAL),), (-5.0, 5.0, -5.0, 5.0),
            {"sgd momentum=0": 0.03, "sgd": 0.01, "adagrad": 1.0, "rmsprop momentum=0": 0.3, "rmsprop": 0.003,
             "adam": 1.0, "adamw": 1.0},
            local_minima=((_ST_LOCAL, _ST_LOCAL), (_ST_LOCAL, _ST_GLOBAL), (_ST_GLOBAL, _ST_LOCAL))),
):
    SURFACES.add(_surface.name, _surface)


