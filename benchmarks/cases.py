"""What `throughput.py` times: the pairs and modes, the library's compiled steps for each
(`JaxCase`), their eager-PyTorch peers (`TorchCase`), the synthetic batches, and the
XLA-layers baseline."""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import time
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Pair:
  teacher: str
  student: str
  input_shape: tuple[int, int, int]


PAIRS = {
    'mlp': Pair('mlp_1200', 'mlp_800', (28, 28, 1)),
    'lenet': Pair('lenet5', 'lenet5_half', (28, 28, 1)),
    'resnet': Pair('resnet56', 'resnet20', (32, 32, 3)),
}
MODES = ('student', 'online_kd', 'cached_kd', 'finetune', 'eval', 'teacher_forward')
# Online distillation with each method of `jaxkd.losses` beside cross-entropy (the paper's
# weights): logit (dkd), batch relation (dist), learnable temperature (ctkd), features
# (fitnet, at), relations (sp, cc, rkd, pkt), map statistics (nst, ickd, fsp), regressors
# (vid, ofd), fusion (reviewkd), contrastive with memory banks (crd), multi-scale cells
# (sdd: GAP classifiers only). Not in the PyTorch peer. Taps per pair: the middle stage, all
# stages, the penultimate embedding, the pre-ReLU maps and the map the classifier pools.
METHOD_MODES = ('dkd', 'dist', 'ctkd', 'fitnet', 'at', 'sp', 'cc', 'rkd', 'pkt', 'nst', 'ickd',
                'fsp', 'vid', 'ofd', 'reviewkd', 'crd', 'sdd')
TAPS = {'mlp': ('dense1', ('dense1', 'dense2')), 'lenet': ('pool2', ('pool1', 'pool2')),
        'resnet': ('stage2', ('stage1', 'stage2', 'stage3'))}
EMBEDDING = {'mlp': 'dense2', 'lenet': 'dense2', 'resnet': 'pool'}
PREACT = {'lenet': ('conv1', 'conv2'), 'resnet': ('stage1/preact', 'stage2/preact',
                                                  'stage3/preact')}
FLOW = {'lenet': ('conv2', 'pool2'), 'resnet': ('stage1', 'stage2', 'stage3')}
CRD_NUM_DATA = 50_000  # a CIFAR-sized memory bank


def method_terms(pair_name: str, mode: str) -> dict:
  """The objective of a method mode, by term name (`jaxkd.losses.build_objective`)."""
  middle, stages = TAPS[pair_name]
  embedding = {'student_tap': EMBEDDING[pair_name], 'teacher_tap': EMBEDDING[pair_name]}
  maps = {'student_taps': stages, 'teacher_taps': stages}
  pick = lambda table: {'student_taps': table[pair_name],  # noqa: E731
                        'teacher_taps': table[pair_name]}
  terms = {
      'dkd': lambda: {'temperature': 4.0, 'target_weight': 1.0, 'non_target_weight': 8.0},
      'dist': lambda: {'temperature': 1.0},
      'ctkd': lambda: {'curriculum_steps': 100},
      'fitnet': lambda: {'weight': 100.0, 'student_tap': middle, 'teacher_tap': middle},
      'at': lambda: {'weight': 1000.0, **maps},
      'sp': lambda: {'weight': 3000.0, 'student_tap': stages[-1], 'teacher_tap': stages[-1]},
      'cc': lambda: {'weight': 100.0, **embedding},
      'rkd': lambda: {'weight': 1.0, **embedding},
      'pkt': lambda: {'weight': 30000.0, **embedding},
      'nst': lambda: {'weight': 50.0, **maps},
      'ickd': lambda: {'weight': 2.5, 'student_taps': stages[-1:], 'teacher_taps': stages[-1:]},
      'fsp': lambda: {'weight': 1.0, **pick(FLOW)},
      'vid': lambda: {'weight': 1.0, **maps},
      'ofd': lambda: {'weight': 1e-3, **pick(PREACT)},
      'reviewkd': lambda: {'weight': 1.0, **maps},
      'crd': lambda: {'weight': 0.8, 'num_data': CRD_NUM_DATA, **embedding},
      'sdd': lambda: {'weight': 0.9, 'student_tap': stages[-1], 'teacher_tap': stages[-1]},
  }[mode]()
  return {'ce': {'weight': HARD_WEIGHT}, mode: {'weight': SOFT_WEIGHT, **terms}}


NUM_CLASSES = 10
LEARNING_RATE = 0.05
# The peer's objective is written out in torch_peer.py with the same constants.
HARD_WEIGHT, SOFT_WEIGHT, TEMPERATURE = 0.5, 0.5, 4.0


# --- jaxkd cases ---------------------------------------------------------------------------

@dataclasses.dataclass
class JaxCase:
  """A compiled step and its arguments; the donated state is threaded through calls."""

  compiled: Callable
  args: list
  donate: bool
  compile_s: float
  flops: float
  param_count: int
  note: str = ''

  def run(self):
    out = self.compiled(*self.args)
    if self.donate:
      self.args[0] = out[0]
    return out

  def window(self, steps: int) -> float:
    import jax
    start = time.perf_counter()
    out = None
    for _ in range(steps):
      out = self.run()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def _finetune_step(student, tx_base, params, batch_stats, input_shape, parallel):
  """The frozen-backbone step of `jaxkd.transfer`: only `head` trains."""
  from jaxkd import transfer
  rules = dict(order=transfer.layer_order(student, input_shape=input_shape),
               trainable=transfer.METHODS['lp'])
  tx = transfer.partition_optimizer(lambda: tx_base, params, **rules)
  step = transfer.make_finetune_step(
      model=student, tx=tx, param_starts=transfer.unfreeze_steps(params, **rules),
      stats_starts=transfer.unfreeze_steps(batch_stats, **rules), parallel=parallel)
  return tx, step, 'jaxkd.transfer'


def make_jax_case(pair: Pair, mode: str, data: dict, *, dtype, parallel) -> JaxCase:
  """Builds, places and AOT-compiles the library step for (pair, mode)."""
  import jax
  import optax
  from jaxkd import losses, models
  from jaxkd.distill import create_distill_state, make_distill_step
  from jaxkd.state import create_train_state, init_variables, model_variables
  from jaxkd.steps import make_eval_step, make_train_step

  overrides = {} if dtype is None else {'dtype': dtype}
  student = models.build(pair.student, num_classes=NUM_CLASSES, **overrides)
  teacher = models.build(pair.teacher, num_classes=NUM_CLASSES, **overrides)
  input_shape = (1,) + pair.input_shape
  tx = optax.sgd(LEARNING_RATE, momentum=0.9)
  batch = {'image': data['image'], 'label': data['label']}
  objective = losses.make_objective(hard_weight=HARD_WEIGHT, soft_weight=SOFT_WEIGHT,
                                    temperature=TEMPERATURE)
  donate = True
  note = ''
  if mode in METHOD_MODES:
    pair_name = next(name for name, p in PAIRS.items() if p == pair)
    objective = losses.build_objective(method_terms(pair_name, mode), num_teachers=1)
  if mode in ('online_kd', 'teacher_forward', *METHOD_MODES):
    teacher_variables = init_variables(teacher, key=jax.random.key(1), input_shape=input_shape)
    teacher_variables = parallel.place_teacher(teacher_variables)
  if mode == 'teacher_forward':
    def forward(variables, batch, axis_name=None):
      del axis_name
      return teacher.apply(variables, batch['image'], train=False)
    step = parallel.compile(forward, donate=False)
    args = [teacher_variables, parallel.shard_batch(batch)]
    donate = False
    counted = teacher_variables['params']
  else:
    if mode == 'finetune':
      init = init_variables(student, key=jax.random.key(0), input_shape=input_shape)
      tx, step, note = _finetune_step(student, tx, init['params'],
                                      init.get('batch_stats', {}), input_shape, parallel)
    if mode in METHOD_MODES:  # a DistillState when a term owns parameters (ctkd, fitnet)
      state = create_distill_state(student, tx, objective, teachers=[teacher],
                                   teacher_variables=[jax.device_get(teacher_variables)],
                                   seed=0, input_shape=input_shape)
    else:
      state = create_train_state(student, tx, seed=0, input_shape=input_shape)
    counted = state.params
    if mode == 'eval':
      step = make_eval_step(model=student, num_classes=NUM_CLASSES, parallel=parallel)
      args = [parallel.replicate(model_variables(state.params, state.batch_stats)),
              parallel.shard_batch(batch)]
      donate = False
    elif mode in ('student', 'finetune'):
      if mode == 'student':
        step = make_train_step(model=student, tx=tx, parallel=parallel)
      args = [parallel.replicate(state), parallel.shard_batch(batch)]
    elif mode in ('online_kd', *METHOD_MODES):
      step = make_distill_step(student=student, teachers=teacher, tx=tx, objective=objective,
                               parallel=parallel)
      if objective.needs_index:  # crd: the batch's rows of the memory banks
        batch = dict(batch, index=jax.numpy.arange(len(batch['label']), dtype='int32'))
      args = [parallel.replicate(state), parallel.shard_batch(batch), teacher_variables]
    elif mode == 'cached_kd':
      step = make_distill_step(student=student, teachers=None, tx=tx, objective=objective,
                               parallel=parallel, cached=True)
      cached = dict(batch, teacher_logits=data['teacher_logits'])
      args = [parallel.replicate(state), parallel.shard_batch(cached), ()]
    else:
      raise ValueError(f'Unknown mode {mode!r}; choose one of {MODES + METHOD_MODES}.')
  return compile_case(step, args, donate=donate, parallel=parallel,
                      param_count=models.param_count(counted), note=note)


def compile_case(step, args: list, *, donate: bool, parallel, param_count: int,
                 note: str = '') -> JaxCase:
  """AOT-compiles `step` for `args` (placed already), timing it; XLA's FLOPs of the step."""
  start = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - start
  return JaxCase(compiled=compiled, args=args, donate=donate, compile_s=compile_s,
                 flops=_flops(compiled) * parallel.size,  # cost analysis is per device
                 param_count=param_count, note=note)


# --- the PyTorch peer ----------------------------------------------------------------------

@dataclasses.dataclass
class TorchCase:
  peer: Any
  param_count: int

  def window(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      self.peer.run()
    self.peer.sync()
    return (time.perf_counter() - start) / steps


def load_peer(name: str = 'torch_peer'):
  """The peer module `name` (`torch_peer`, `torch_lm_peer`), or None (with a message) when
  PyTorch is not installed.

  Unless set already, OMP_WAIT_POLICY=PASSIVE: PyTorch's OpenMP threads otherwise spin for
  200 ms after each parallel region, which takes the cores from jaxkd's next window in
  this interleaved run, and makes PyTorch itself ~10x slower whenever another process
  wants a core (measured here: MLP step 14 ms idle, 245 ms at load average 7; 26 ms with
  PASSIVE).
  """
  os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
  try:
    import torch  # noqa: F401
  except ImportError:
    print('PyTorch is not installed; skipping the peer rows '
          '(pip install "jaxkd[bench]" to add them).', file=sys.stderr)
    return None
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  return importlib.import_module(name)


def make_torch_case(torch_peer, pair: Pair, mode: str, data: dict, *, device: str,
                    dtype: str = 'float32') -> TorchCase:
  peer = torch_peer.Peer(teacher=pair.teacher, student=pair.student, mode=mode,
                         images_nhwc=data['image'], labels=data['label'],
                         teacher_logits=data['teacher_logits'], learning_rate=LEARNING_RATE,
                         device=device, dtype=dtype)
  return TorchCase(peer=peer, param_count=peer.param_count)


# --- data and the XLA-layers baseline ------------------------------------------------------

def make_data(pair: Pair, batch_size: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {
      'image': rng.normal(size=(batch_size,) + pair.input_shape).astype(np.float32),
      'label': rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
      'teacher_logits': rng.normal(size=(batch_size, NUM_CLASSES)).astype(np.float32),
  }


BASELINE = 'jaxkd-xla-layers'
KERNELS_BASELINE = 'jaxkd-ynnpack'
# Before/after baselines: the `jaxkd.ops` settings each is built with (`ops.configured`), the
# ratio key on the jaxkd row and the README table's two columns.
BASELINES = {
    BASELINE: ({'conv': 'xla', 'pool': 'xla'}, 'vs_xla_layers',
               'XLA layers ex/s', 'fastconv speed-up'),
    KERNELS_BASELINE: ({'cpu_conv_kernels': 'ynnpack'}, 'vs_ynnpack',
                       'YNNPACK kernels ex/s', 'own-kernel speed-up'),
}


def with_baseline(framework: str, build: Callable):
  """Builds (and so traces and compiles) a case with `BASELINES[framework]`'s settings: its
  steps keep them (`jaxkd.ops.use`; a step compiled by `Parallel` traces with the operations
  current when it was built)."""
  from jaxkd import ops
  with ops.use(ops.configured(**BASELINES[framework][0])):
    return build()
