"""jaxkd: knowledge distillation and transfer learning in JAX.

The core API is re-exported here; `jaxkd.data`, `jaxkd.checkpoint`, `jaxkd.transfer` and
`jaxkd.cache` are imported on use (they pull in TFDS and Orbax).
"""

__version__ = '0.1.0'

from jaxkd import losses as losses
from jaxkd import models as models
from jaxkd.augment import Augment as Augment
from jaxkd.distill import inference_apply as inference_apply
from jaxkd.distill import make_distill_step as make_distill_step
from jaxkd.parallel import Parallel as Parallel
from jaxkd.state import TrainState as TrainState
from jaxkd.state import create_train_state as create_train_state
from jaxkd.state import init_variables as init_variables
from jaxkd.state import tree_sha256 as tree_sha256
from jaxkd.steps import make_eval_step as make_eval_step
from jaxkd.steps import make_train_step as make_train_step
