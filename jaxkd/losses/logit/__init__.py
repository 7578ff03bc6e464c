"""Logit-based distillation losses: pure per-example functions (no reduction).

Weights, warm-ups, learnable temperatures and other state belong to the terms that wrap
these functions, not to the functions.
"""
from jaxkd.losses.logit.decoupled import dkd_loss as dkd_loss
from jaxkd.losses.logit.decoupled import dkd_parts as dkd_parts
from jaxkd.losses.logit.decoupled import nkd_loss as nkd_loss
from jaxkd.losses.logit.divergence import jsd_loss as jsd_loss
from jaxkd.losses.logit.divergence import reverse_kl_loss as reverse_kl_loss
from jaxkd.losses.logit.relation import dist_inter_loss as dist_inter_loss
from jaxkd.losses.logit.relation import dist_intra_loss as dist_intra_loss
from jaxkd.losses.logit.relation import dist_loss as dist_loss
from jaxkd.losses.logit.reversal import gradient_reversal as gradient_reversal
from jaxkd.losses.logit.standardize import standardize_logits as standardize_logits
from jaxkd.losses.logit.transformed import ttm_loss as ttm_loss
from jaxkd.losses.logit.transformed import wttm_loss as wttm_loss

__all__ = [
    'dist_inter_loss',
    'dist_intra_loss',
    'dist_loss',
    'dkd_loss',
    'dkd_parts',
    'gradient_reversal',
    'jsd_loss',
    'nkd_loss',
    'reverse_kl_loss',
    'standardize_logits',
    'ttm_loss',
    'wttm_loss',
]
