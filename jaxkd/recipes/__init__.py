"""Experiment recipes: the edge where an ml_collections config becomes typed library calls.

`experiments/*.py` parse flags and call one recipe, `RECIPES[name](config, workdir)`. A
recipe is one module (`train`, `distillation`, `finetune`, and the teacher schemes
`mutual_learning`, `ema_teacher`, `chain`) assembled from the shared builders
(`components`: task, model, optimizer, parallel mode, batches, evaluator, teachers), the run
frame (`run`: checkpointer, the shared loop, final metrics and model) and the run's
provenance (`provenance`). Every setting's default is written once, in `defaults`: the base
configs `experiments/configs/*.py` start from, and what a recipe reads for a setting its
config leaves out; `method_configs`, every registered distillation method as a named
config (`method_config('dkd')`). A new recipe is a new module registered in `RECIPES`.
"""
from jaxkd.recipes.components import DTYPES as DTYPES
from jaxkd.recipes.components import Task as Task
from jaxkd.recipes.components import build_augment as build_augment
from jaxkd.recipes.components import build_model as build_model
from jaxkd.recipes.components import build_optimizer as build_optimizer
from jaxkd.recipes.components import build_parallel as build_parallel
from jaxkd.recipes.components import input_transform as input_transform
from jaxkd.recipes.components import load_init as load_init
from jaxkd.recipes.components import load_task as load_task
from jaxkd.recipes.components import load_teacher as load_teacher
from jaxkd.recipes.components import make_batches as make_batches
from jaxkd.recipes.components import make_evaluator as make_evaluator
from jaxkd.recipes.components import num_train_steps as num_train_steps
from jaxkd.recipes.chain import chain as chain
from jaxkd.recipes.distillation import distill as distill
from jaxkd.recipes.ema_teacher import ema_teacher as ema_teacher
from jaxkd.recipes.language_model import run as run_language_model
from jaxkd.recipes.finetune import finetune as finetune
from jaxkd.recipes.method_configs import method_config as method_config
from jaxkd.recipes.mutual_learning import mutual as mutual
from jaxkd.recipes.provenance import best_epoch as best_epoch
from jaxkd.recipes.provenance import cpu_model as cpu_model
from jaxkd.recipes.provenance import enable_compilation_cache as enable_compilation_cache
from jaxkd.recipes.provenance import machine as machine
from jaxkd.recipes.provenance import run_metadata as run_metadata
from jaxkd.recipes.provenance import write_json as write_json
from jaxkd.recipes.run import checkpointing as checkpointing
from jaxkd.recipes.run import finish as finish
from jaxkd.recipes.run import fit_config as fit_config
from jaxkd.recipes.train import train as train

# name -> recipe(config, workdir) -> final metrics; what the CLI and table sweeps call.
RECIPES = {'train': train, 'distill': distill, 'finetune': finetune, 'mutual': mutual,
           'ema_teacher': ema_teacher, 'chain': chain, 'language_model': run_language_model}

__all__ = [
    'DTYPES', 'RECIPES', 'Task', 'best_epoch', 'build_augment', 'build_model',
    'build_optimizer', 'build_parallel', 'chain', 'checkpointing', 'cpu_model', 'distill',
    'ema_teacher', 'enable_compilation_cache', 'finetune', 'finish', 'fit_config',
    'input_transform', 'load_init', 'load_task', 'load_teacher', 'machine', 'make_batches',
    'make_evaluator', 'mutual', 'num_train_steps', 'run_language_model', 'run_metadata',
    'train', 'write_json',
]
