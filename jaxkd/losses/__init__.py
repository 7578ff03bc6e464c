"""Losses: pure per-example functions (no reduction), the terms that wrap them, and the
objective that weighs terms. Each method is one module of `jaxkd.losses.methods` (its
functions, its term, its paper's defaults); `LOSSES` names every term; `make_objective` is
the classic hard + soft shorthand (terms `ce` and `kd`), `build_objective` builds any
combination by name. A term reads one `Context` (outputs, batch, step, key, its own
parameters and state, the data axis)."""
from jaxkd.losses.memory_bank import ClassIndexTable as ClassIndexTable
from jaxkd.losses.memory_bank import HOST_MEMORY_FRACTION as HOST_MEMORY_FRACTION
from jaxkd.losses.memory_bank import build_class_index_table as build_class_index_table
from jaxkd.losses.memory_bank import check_memory_bank_fits as check_memory_bank_fits
from jaxkd.losses.memory_bank import init_memory_bank as init_memory_bank
from jaxkd.losses.memory_bank import memory_bank_bytes as memory_bank_bytes
from jaxkd.losses.memory_bank import sample_contrast_indices as sample_contrast_indices
from jaxkd.losses.memory_bank import (
    sample_other_class_contrast_indices as sample_other_class_contrast_indices)
from jaxkd.losses.memory_bank import update_memory_bank as update_memory_bank
from jaxkd.losses.methods.at import AT as AT
from jaxkd.losses.methods.at import attention_map as attention_map
from jaxkd.losses.methods.at import attention_transfer_loss as attention_transfer_loss
from jaxkd.losses.methods.cc import CC as CC
from jaxkd.losses.methods.cc import cc_loss as cc_loss
from jaxkd.losses.methods.ce import CrossEntropy as CrossEntropy
from jaxkd.losses.methods.ce import cross_entropy as cross_entropy
from jaxkd.losses.methods.crd import CRD as CRD
from jaxkd.losses.methods.crd import crd_embed as crd_embed
from jaxkd.losses.methods.crd import crd_loss as crd_loss
from jaxkd.losses.methods.crd import crd_loss_with_normalisers as crd_loss_with_normalisers
from jaxkd.losses.methods.ctkd import CTKD as CTKD
from jaxkd.losses.methods.ctkd import gradient_reversal as gradient_reversal
from jaxkd.losses.methods.dist import DIST as DIST
from jaxkd.losses.methods.dist import dist_inter_loss as dist_inter_loss
from jaxkd.losses.methods.dist import dist_intra_loss as dist_intra_loss
from jaxkd.losses.methods.dist import dist_loss as dist_loss
from jaxkd.losses.methods.dkd import DKD as DKD
from jaxkd.losses.methods.dkd import dkd_loss as dkd_loss
from jaxkd.losses.methods.dkd import dkd_parts as dkd_parts
from jaxkd.losses.methods.fitnet import FitNet as FitNet
from jaxkd.losses.methods.fitnet import hint_loss as hint_loss
from jaxkd.losses.methods.fsp import FSP as FSP
from jaxkd.losses.methods.fsp import fsp_loss as fsp_loss
from jaxkd.losses.methods.fsp import fsp_matrix as fsp_matrix
from jaxkd.losses.methods.ickd import ICKD as ICKD
from jaxkd.losses.methods.ickd import ickd_loss as ickd_loss
from jaxkd.losses.methods.jsd import JSD as JSD
from jaxkd.losses.methods.jsd import jsd_loss as jsd_loss
from jaxkd.losses.methods.kd import KD as KD
from jaxkd.losses.methods.kd import kd_loss as kd_loss
from jaxkd.losses.methods.kd import kd_loss_from_probs as kd_loss_from_probs
from jaxkd.losses.methods.logit_mse import LogitMSE as LogitMSE
from jaxkd.losses.methods.logit_mse import mse_logit_loss as mse_logit_loss
from jaxkd.losses.methods.nkd import NKD as NKD
from jaxkd.losses.methods.nkd import nkd_loss as nkd_loss
from jaxkd.losses.methods.nst import NST as NST
from jaxkd.losses.methods.nst import nst_loss as nst_loss
from jaxkd.losses.methods.ofd import OFD as OFD
from jaxkd.losses.methods.ofd import OFD_CIFAR_WEIGHT as OFD_CIFAR_WEIGHT
from jaxkd.losses.methods.ofd import OFD_IMAGENET_WEIGHT as OFD_IMAGENET_WEIGHT
from jaxkd.losses.methods.ofd import ofd_loss as ofd_loss
from jaxkd.losses.methods.ofd import ofd_margin as ofd_margin
from jaxkd.losses.methods.pkt import PKT as PKT
from jaxkd.losses.methods.pkt import pkt_loss as pkt_loss
from jaxkd.losses.methods.reverse_kl import ReverseKL as ReverseKL
from jaxkd.losses.methods.reverse_kl import reverse_kl_loss as reverse_kl_loss
from jaxkd.losses.methods.reviewkd import ReviewKD as ReviewKD
from jaxkd.losses.methods.reviewkd import abf_combine as abf_combine
from jaxkd.losses.methods.reviewkd import hcl_loss as hcl_loss
from jaxkd.losses.methods.reviewkd import nearest_upsample as nearest_upsample
from jaxkd.losses.methods.rkd import RKD as RKD
from jaxkd.losses.methods.rkd import rkd_angle_loss as rkd_angle_loss
from jaxkd.losses.methods.rkd import rkd_distance_loss as rkd_distance_loss
from jaxkd.losses.methods.rkd import rkd_loss as rkd_loss
from jaxkd.losses.methods.sampled_kd import SampledKD as SampledKD
from jaxkd.losses.methods.sampled_kd import sampled_kd_loss as sampled_kd_loss
from jaxkd.losses.methods.sdd import SDD as SDD
from jaxkd.losses.methods.sdd import multiscale_pooled_features as multiscale_pooled_features
from jaxkd.losses.methods.sdd import sdd_loss as sdd_loss
from jaxkd.losses.methods.skew_kl import SkewKL as SkewKL
from jaxkd.losses.methods.skew_kl import skew_kl_loss as skew_kl_loss
from jaxkd.losses.methods.skew_reverse_kl import SkewReverseKL as SkewReverseKL
from jaxkd.losses.methods.skew_reverse_kl import skew_reverse_kl_loss as skew_reverse_kl_loss
from jaxkd.losses.methods.sp import SP as SP
from jaxkd.losses.methods.sp import sp_loss as sp_loss
from jaxkd.losses.methods.ttm import TTM as TTM
from jaxkd.losses.methods.ttm import ttm_loss as ttm_loss
from jaxkd.losses.methods.vid import VID as VID
from jaxkd.losses.methods.vid import vid_log_scale_init as vid_log_scale_init
from jaxkd.losses.methods.vid import vid_loss as vid_loss
from jaxkd.losses.methods.wttm import WTTM as WTTM
from jaxkd.losses.methods.wttm import wttm_loss as wttm_loss
from jaxkd.losses.nce import CRD_EMBED_DIM as CRD_EMBED_DIM
from jaxkd.losses.nce import CRD_MOMENTUM as CRD_MOMENTUM
from jaxkd.losses.nce import CRD_NUM_NEGATIVES as CRD_NUM_NEGATIVES
from jaxkd.losses.nce import CRD_TEMPERATURE as CRD_TEMPERATURE
from jaxkd.losses.nce import UNSET_NORMALISER as UNSET_NORMALISER
from jaxkd.losses.nce import contrast_scores as contrast_scores
from jaxkd.losses.nce import estimate_normaliser as estimate_normaliser
from jaxkd.losses.nce import nce_loss as nce_loss
from jaxkd.losses.nce import normalise_scores as normalise_scores
from jaxkd.losses.numerics import standardize_logits as standardize_logits
from jaxkd.losses.objective import Objective as Objective
from jaxkd.losses.objective import check_num_classes as check_num_classes
from jaxkd.losses.objective import make_objective as make_objective
from jaxkd.losses.pooling import adaptive_avg_pool as adaptive_avg_pool
from jaxkd.losses.registry import LOSSES as LOSSES
from jaxkd.losses.registry import build_objective as build_objective
from jaxkd.losses.registry import make_term as make_term
from jaxkd.losses.terms import Context as Context
from jaxkd.losses.terms import Hyperparam as Hyperparam
from jaxkd.losses.terms import LogitTerm as LogitTerm
from jaxkd.losses.terms import MULTI_TEACHER as MULTI_TEACHER
from jaxkd.losses.terms import Outputs as Outputs
from jaxkd.losses.terms import Paper as Paper
from jaxkd.losses.terms import Term as Term
from jaxkd.losses.terms import gather as gather
from jaxkd.losses.terms import is_constant_zero as is_constant_zero

__all__ = [
    'AT', 'CC', 'CRD', 'CRD_EMBED_DIM', 'CRD_MOMENTUM', 'CRD_NUM_NEGATIVES', 'CRD_TEMPERATURE',
    'CTKD', 'ClassIndexTable', 'Context', 'CrossEntropy', 'DIST', 'DKD', 'FSP', 'FitNet',
    'HOST_MEMORY_FRACTION', 'Hyperparam', 'ICKD', 'JSD', 'KD', 'LOSSES', 'LogitMSE', 'LogitTerm',
    'MULTI_TEACHER', 'NKD', 'NST', 'OFD', 'OFD_CIFAR_WEIGHT', 'OFD_IMAGENET_WEIGHT', 'Objective',
    'Outputs', 'PKT', 'Paper', 'RKD', 'ReverseKL', 'ReviewKD', 'SDD', 'SP', 'SampledKD', 'SkewKL',
    'SkewReverseKL', 'TTM', 'Term',
    'UNSET_NORMALISER', 'VID', 'WTTM', 'abf_combine', 'adaptive_avg_pool', 'attention_map',
    'attention_transfer_loss', 'build_class_index_table', 'build_objective', 'cc_loss',
    'check_memory_bank_fits', 'check_num_classes', 'contrast_scores', 'crd_embed', 'crd_loss',
    'crd_loss_with_normalisers', 'cross_entropy', 'dist_inter_loss', 'dist_intra_loss',
    'dist_loss', 'dkd_loss', 'dkd_parts', 'estimate_normaliser', 'fsp_loss', 'fsp_matrix',
    'gather', 'gradient_reversal', 'hcl_loss', 'hint_loss', 'ickd_loss', 'init_memory_bank',
    'is_constant_zero', 'jsd_loss', 'kd_loss', 'kd_loss_from_probs', 'make_objective',
    'make_term', 'memory_bank_bytes', 'mse_logit_loss', 'multiscale_pooled_features', 'nce_loss',
    'nearest_upsample', 'nkd_loss', 'normalise_scores', 'nst_loss', 'ofd_loss', 'ofd_margin',
    'pkt_loss', 'reverse_kl_loss', 'rkd_angle_loss', 'rkd_distance_loss', 'rkd_loss',
    'sample_contrast_indices', 'sample_other_class_contrast_indices', 'sampled_kd_loss',
    'sdd_loss',
    'skew_kl_loss', 'skew_reverse_kl_loss', 'sp_loss',
    'standardize_logits', 'ttm_loss', 'update_memory_bank', 'vid_log_scale_init', 'vid_loss',
    'wttm_loss',
]
