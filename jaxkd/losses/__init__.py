"""Losses: pure per-example functions (no reduction) and the composed training objective."""
from jaxkd.losses.classification import cross_entropy as cross_entropy
from jaxkd.losses.kd import kd_loss as kd_loss
from jaxkd.losses.kd import kd_loss_from_probs as kd_loss_from_probs
from jaxkd.losses.objective import HARD_LOSSES as HARD_LOSSES
from jaxkd.losses.objective import MULTI_TEACHER as MULTI_TEACHER
from jaxkd.losses.objective import SOFT_LOSSES as SOFT_LOSSES
from jaxkd.losses.objective import Hyperparam as Hyperparam
from jaxkd.losses.objective import Objective as Objective
from jaxkd.losses.objective import check_num_classes as check_num_classes
from jaxkd.losses.objective import make_objective as make_objective

__all__ = [
    'HARD_LOSSES',
    'MULTI_TEACHER',
    'SOFT_LOSSES',
    'Hyperparam',
    'Objective',
    'check_num_classes',
    'cross_entropy',
    'kd_loss',
    'kd_loss_from_probs',
    'make_objective',
]
