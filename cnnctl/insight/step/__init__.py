"""One training step worked by hand, as study note 002 (section 2.1) works back-propagation: ``cnnctl step``.

A training step is four pieces of arithmetic. The *forward* pass carries one image through every layer to the
logits z; softmax turns them into probabilities p; the loss compares p with the target y (cross-entropy,
L = -sum_i y_i log p_i). The *backward* pass starts where softmax and cross-entropy meet, dL/dz = p - y, and
follows the chain rule down, layer by layer, to one weight: a linear layer's W[i, j] gets the gradient at its
output i times its input j; a convolution's W[o, c, u, v] gets that product summed over every output position,
since the same kernel is used at each (weight sharing); a bias gets the upstream gradient, summed the same way.
The *update* then moves the weight by the configured optimizer's rule.

Every number is worked twice: by hand here, in float64, from the layer inputs and output gradients that hooks
capture; and by PyTorch: autograd's ``param.grad``, and a real ``optimizer.step()`` on a deep copy of the model
and of the optimizer that ``cnnctl.training.optim`` builds from the config. The two are shown side by side with their
difference, so what is printed is what training does.

The loss's gradient at the logits is one function per loss name (``LOSSES``), and the update one function per
optimizer name (``UPDATES``): a new loss or optimizer is one new entry.
"""

from cnnctl.insight.step.loss_rules import LOSSES
from cnnctl.insight.step.report import format_step
from cnnctl.insight.step.updates import UPDATES
from cnnctl.insight.step.worked import run_step

__all__ = ["LOSSES", "UPDATES", "format_step", "run_step"]
