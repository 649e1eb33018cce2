"""synthmodel: the synthetic cross-class world of Wei, Guo & Wang (ICML 2025), on CPU.

The public surface (everything else may move):

* :class:`FeatureModel`, :func:`make_preset`: the world (``spec``);
* :func:`sample`: seeded data (``sample``);
* :class:`TiedLinear`, :class:`FullLinear`, :class:`MLP`, :func:`build_model` (``models``);
* :func:`pgd`, :func:`fgsm` and the linear closed forms (``attacks``);
* :func:`attribution` -> C and CAS (``attribution``);
* ``synthmodel.train.train`` / ``TrainConfig`` for training (import it from its module).
"""

from .attacks import fgsm, linear_logitwise_logits, linear_robust_correct, linear_worst_margins, pgd
from .attribution import Attribution, attribution, cas_from_matrix, class_matrix
from .models import MLP, FullLinear, TiedLinear, build_model
from .sample import sample
from .spec import FeatureModel, make_preset, preset_names

__version__ = "0.2.0"

__all__ = [
    "FeatureModel", "make_preset", "preset_names", "sample", "TiedLinear", "FullLinear", "MLP", "build_model",
    "pgd", "fgsm", "linear_worst_margins", "linear_robust_correct", "linear_logitwise_logits",
    "Attribution", "attribution", "class_matrix", "cas_from_matrix", "__version__",
]
