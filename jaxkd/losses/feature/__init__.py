"""Feature-based distillation losses: pure per-example functions (no reduction).

The families: hints (FitNets), attention transfer, relations between examples (RKD, SP,
CC, PKT), feature statistics (FSP, NST, ICKD), variational information (VID), overhaul
margins (OFD), review fusion (ReviewKD), scale-decoupled logits (SDD), and contrastive
representation distillation (CRD) with its memory banks.

Projectors that map student features to the teacher's shape are trained with the student
and belong to the terms that wrap these functions, not to the functions.
"""
from jaxkd.losses.feature.attention import attention_map as attention_map
from jaxkd.losses.feature.attention import attention_transfer_loss as attention_transfer_loss
from jaxkd.losses.feature.contrastive import CRD_EMBED_DIM as CRD_EMBED_DIM
from jaxkd.losses.feature.contrastive import CRD_MOMENTUM as CRD_MOMENTUM
from jaxkd.losses.feature.contrastive import CRD_NUM_NEGATIVES as CRD_NUM_NEGATIVES
from jaxkd.losses.feature.contrastive import CRD_TEMPERATURE as CRD_TEMPERATURE
from jaxkd.losses.feature.contrastive import UNSET_NORMALISER as UNSET_NORMALISER
from jaxkd.losses.feature.contrastive import contrast_scores as contrast_scores
from jaxkd.losses.feature.contrastive import crd_embed as crd_embed
from jaxkd.losses.feature.contrastive import crd_loss as crd_loss
from jaxkd.losses.feature.contrastive import (
    crd_loss_with_normalisers as crd_loss_with_normalisers)
from jaxkd.losses.feature.contrastive import estimate_normaliser as estimate_normaliser
from jaxkd.losses.feature.contrastive import nce_loss as nce_loss
from jaxkd.losses.feature.contrastive import normalise_scores as normalise_scores
from jaxkd.losses.feature.hint import hint_loss as hint_loss
from jaxkd.losses.feature.memory_bank import ClassIndexTable as ClassIndexTable
from jaxkd.losses.feature.memory_bank import HOST_MEMORY_FRACTION as HOST_MEMORY_FRACTION
from jaxkd.losses.feature.memory_bank import build_class_index_table as build_class_index_table
from jaxkd.losses.feature.memory_bank import check_memory_bank_fits as check_memory_bank_fits
from jaxkd.losses.feature.memory_bank import init_memory_bank as init_memory_bank
from jaxkd.losses.feature.memory_bank import memory_bank_bytes as memory_bank_bytes
from jaxkd.losses.feature.memory_bank import sample_contrast_indices as sample_contrast_indices
from jaxkd.losses.feature.memory_bank import (
    sample_other_class_contrast_indices as sample_other_class_contrast_indices)
from jaxkd.losses.feature.memory_bank import update_memory_bank as update_memory_bank
from jaxkd.losses.feature.overhaul import OFD_CIFAR_WEIGHT as OFD_CIFAR_WEIGHT
from jaxkd.losses.feature.overhaul import OFD_IMAGENET_WEIGHT as OFD_IMAGENET_WEIGHT
from jaxkd.losses.feature.overhaul import ofd_loss as ofd_loss
from jaxkd.losses.feature.overhaul import ofd_margin as ofd_margin
from jaxkd.losses.feature.relation import cc_loss as cc_loss
from jaxkd.losses.feature.relation import pkt_loss as pkt_loss
from jaxkd.losses.feature.relation import rkd_angle_loss as rkd_angle_loss
from jaxkd.losses.feature.relation import rkd_distance_loss as rkd_distance_loss
from jaxkd.losses.feature.relation import rkd_loss as rkd_loss
from jaxkd.losses.feature.relation import sp_loss as sp_loss
from jaxkd.losses.feature.review import abf_combine as abf_combine
from jaxkd.losses.feature.review import adaptive_avg_pool as adaptive_avg_pool
from jaxkd.losses.feature.review import hcl_loss as hcl_loss
from jaxkd.losses.feature.review import nearest_upsample as nearest_upsample
from jaxkd.losses.feature.scale_decoupled import (
    multiscale_pooled_features as multiscale_pooled_features)
from jaxkd.losses.feature.scale_decoupled import sdd_loss as sdd_loss
from jaxkd.losses.feature.statistics import fsp_loss as fsp_loss
from jaxkd.losses.feature.statistics import fsp_matrix as fsp_matrix
from jaxkd.losses.feature.statistics import ickd_loss as ickd_loss
from jaxkd.losses.feature.statistics import nst_loss as nst_loss
from jaxkd.losses.feature.variational import vid_log_scale_init as vid_log_scale_init
from jaxkd.losses.feature.variational import vid_loss as vid_loss

__all__ = [
    'CRD_EMBED_DIM',
    'CRD_MOMENTUM',
    'CRD_NUM_NEGATIVES',
    'CRD_TEMPERATURE',
    'ClassIndexTable',
    'HOST_MEMORY_FRACTION',
    'OFD_CIFAR_WEIGHT',
    'OFD_IMAGENET_WEIGHT',
    'UNSET_NORMALISER',
    'abf_combine',
    'adaptive_avg_pool',
    'attention_map',
    'attention_transfer_loss',
    'build_class_index_table',
    'cc_loss',
    'check_memory_bank_fits',
    'contrast_scores',
    'crd_embed',
    'crd_loss',
    'crd_loss_with_normalisers',
    'estimate_normaliser',
    'fsp_loss',
    'fsp_matrix',
    'hcl_loss',
    'hint_loss',
    'ickd_loss',
    'init_memory_bank',
    'memory_bank_bytes',
    'multiscale_pooled_features',
    'nce_loss',
    'nearest_upsample',
    'normalise_scores',
    'nst_loss',
    'ofd_loss',
    'ofd_margin',
    'pkt_loss',
    'rkd_angle_loss',
    'rkd_distance_loss',
    'rkd_loss',
    'sample_contrast_indices',
    'sample_other_class_contrast_indices',
    'sdd_loss',
    'sp_loss',
    'update_memory_bank',
    'vid_log_scale_init',
    'vid_loss',
]
