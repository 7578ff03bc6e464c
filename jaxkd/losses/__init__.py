"""Losses: pure per-example functions (no reduction), the terms that wrap them, and the
objective that weighs terms. `LOSSES` names every term; `make_objective` is the classic
hard + soft shorthand, `build_objective` builds any combination by name."""
from jaxkd.losses.classification import cross_entropy as cross_entropy
from jaxkd.losses.contrastive_terms import CRD as CRD
from jaxkd.losses.feature import attention_map as attention_map
from jaxkd.losses.feature import attention_transfer_loss as attention_transfer_loss
from jaxkd.losses.feature import hint_loss as hint_loss
from jaxkd.losses.feature import cc_loss as cc_loss
from jaxkd.losses.feature import crd_loss as crd_loss
from jaxkd.losses.feature import fsp_loss as fsp_loss
from jaxkd.losses.feature import hcl_loss as hcl_loss
from jaxkd.losses.feature import ickd_loss as ickd_loss
from jaxkd.losses.feature import nst_loss as nst_loss
from jaxkd.losses.feature import ofd_loss as ofd_loss
from jaxkd.losses.feature import pkt_loss as pkt_loss
from jaxkd.losses.feature import rkd_loss as rkd_loss
from jaxkd.losses.feature import sdd_loss as sdd_loss
from jaxkd.losses.feature import sp_loss as sp_loss
from jaxkd.losses.feature import vid_loss as vid_loss
from jaxkd.losses.feature_terms import AT as AT
from jaxkd.losses.feature_terms import FitNet as FitNet
from jaxkd.losses.kd import kd_loss as kd_loss
from jaxkd.losses.kd import kd_loss_from_probs as kd_loss_from_probs
from jaxkd.losses.logit import dist_inter_loss as dist_inter_loss
from jaxkd.losses.logit import dist_intra_loss as dist_intra_loss
from jaxkd.losses.logit import dist_loss as dist_loss
from jaxkd.losses.logit import dkd_loss as dkd_loss
from jaxkd.losses.logit import dkd_parts as dkd_parts
from jaxkd.losses.logit import gradient_reversal as gradient_reversal
from jaxkd.losses.logit import jsd_loss as jsd_loss
from jaxkd.losses.logit import nkd_loss as nkd_loss
from jaxkd.losses.logit import reverse_kl_loss as reverse_kl_loss
from jaxkd.losses.logit import standardize_logits as standardize_logits
from jaxkd.losses.logit import ttm_loss as ttm_loss
from jaxkd.losses.logit import wttm_loss as wttm_loss
from jaxkd.losses.logit_terms import CTKD as CTKD
from jaxkd.losses.logit_terms import DIST as DIST
from jaxkd.losses.logit_terms import DKD as DKD
from jaxkd.losses.logit_terms import JSD as JSD
from jaxkd.losses.logit_terms import NKD as NKD
from jaxkd.losses.logit_terms import TTM as TTM
from jaxkd.losses.logit_terms import WTTM as WTTM
from jaxkd.losses.logit_terms import ReverseKL as ReverseKL
from jaxkd.losses.map_terms import FSP as FSP
from jaxkd.losses.map_terms import ICKD as ICKD
from jaxkd.losses.map_terms import NST as NST
from jaxkd.losses.map_terms import OFD as OFD
from jaxkd.losses.map_terms import VID as VID
from jaxkd.losses.multiscale_terms import SDD as SDD
from jaxkd.losses.multiscale_terms import ReviewKD as ReviewKD
from jaxkd.losses.objective import Objective as Objective
from jaxkd.losses.objective import check_num_classes as check_num_classes
from jaxkd.losses.objective import make_objective as make_objective
from jaxkd.losses.registry import LOSSES as LOSSES
from jaxkd.losses.registry import build_objective as build_objective
from jaxkd.losses.registry import make_term as make_term
from jaxkd.losses.relation_terms import CC as CC
from jaxkd.losses.relation_terms import PKT as PKT
from jaxkd.losses.relation_terms import RKD as RKD
from jaxkd.losses.relation_terms import SP as SP
from jaxkd.losses.terms import KD as KD
from jaxkd.losses.terms import MULTI_TEACHER as MULTI_TEACHER
from jaxkd.losses.terms import CrossEntropy as CrossEntropy
from jaxkd.losses.terms import Hyperparam as Hyperparam
from jaxkd.losses.terms import LogitTerm as LogitTerm
from jaxkd.losses.terms import Outputs as Outputs
from jaxkd.losses.terms import Term as Term
from jaxkd.losses.terms import gather as gather
from jaxkd.losses.terms import is_constant_zero as is_constant_zero

__all__ = [
    'AT', 'CC', 'CRD', 'CTKD', 'CrossEntropy', 'DIST', 'DKD', 'FSP', 'FitNet', 'Hyperparam',
    'ICKD', 'JSD', 'KD', 'LOSSES', 'LogitTerm', 'MULTI_TEACHER', 'NKD', 'NST', 'OFD',
    'Objective', 'Outputs', 'PKT', 'RKD', 'ReverseKL', 'ReviewKD', 'SDD', 'SP', 'TTM', 'Term',
    'VID', 'WTTM', 'attention_map', 'attention_transfer_loss', 'build_objective', 'cc_loss',
    'check_num_classes', 'crd_loss', 'cross_entropy', 'dist_inter_loss', 'dist_intra_loss',
    'dist_loss', 'dkd_loss', 'dkd_parts', 'fsp_loss', 'gather', 'gradient_reversal',
    'hcl_loss', 'hint_loss', 'ickd_loss', 'is_constant_zero', 'jsd_loss', 'kd_loss',
    'kd_loss_from_probs', 'make_objective', 'make_term', 'nkd_loss', 'nst_loss', 'ofd_loss',
    'pkt_loss', 'reverse_kl_loss', 'rkd_loss', 'sdd_loss', 'sp_loss', 'standardize_logits',
    'ttm_loss', 'vid_loss', 'wttm_loss',
]
