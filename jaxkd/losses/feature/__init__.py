"""Feature-based distillation losses: pure per-example functions (no reduction).

Projectors that map student features to the teacher's shape are trained with the student
and belong to the terms that wrap these functions, not to the functions.
"""
from jaxkd.losses.feature.attention import attention_map as attention_map
from jaxkd.losses.feature.attention import attention_transfer_loss as attention_transfer_loss
from jaxkd.losses.feature.hint import hint_loss as hint_loss

__all__ = [
    'attention_map',
    'attention_transfer_loss',
    'hint_loss',
]
