"""Language models: train one on an offline corpus, or distil a trained one into another,
through the shared step, loop and checkpoints (exact resume, teacher fingerprints checked).

  config = language_model.default_config()
  config.model, config.num_steps = 'lm_teacher', 3000
  language_model.run(config, '/tmp/teacher')                       # trains: cross-entropy
  config.model, config.teacher_dir = 'lm_student', '/tmp/teacher'
  config.terms = {'ce': {'weight': 0.5}, 'kd': {'weight': 0.5, 'temperature': 1.0}}
  language_model.run(config, '/tmp/student')                       # distils
  config.seqkd = {'decode': 'beam', 'num_beams': 4, 'prompt_len': 32, 'new_tokens': 96}
  config.terms = {'ce': {'weight': 1.0}}                    # + 'kd' for word-KD beside it
  language_model.run(config, '/tmp/seqkd')     # sequence-level KD (jaxkd.seqkd)
  config.seqkd, config.terms = {}, {'jsd': {'weight': 1.0, 'mixing_weight': 0.5}}
  config.on_policy = {'student_data_fraction': 0.5, 'prompt_len': 32, 'new_tokens': 96}
  language_model.run(config, '/tmp/gkd')       # on-policy distillation (jaxkd.on_policy)

With `config.seqkd` set, the teacher first writes its continuations of the training rows'
prompts (once, to `seqkd.data_dir`, default WORKDIR/seqkd_data, with a provenance checked on
every later read), and the student trains on prompt + continuation with the loss on the
continuation only; the live teacher runs in the step only when a term reads it (word-KD).

From a stored teacher cache instead of a live teacher (written once from `teacher_dir` if
`dir` holds none, its provenance checked against the run's; `jaxkd.cache_lm`):

  config.teacher_cache = {'kind': 'sampled', 'k': 8, 'dir': '/tmp/cache'}
  config.terms = {'sampled_kd': {'weight': 1.0, 'temperature': 1.0}}
  # or {'kind': 'topk', 'k': 8, 'dir': ...} with terms {'kd': {'weight': 1.0, ...}}

With `config.on_policy` set (GKD, `jaxkd.on_policy`), each step trains, with probability
`student_data_fraction`, on the student's own samples of its rows' prompts instead of the
rows' continuations, the terms against the live teacher on those sequences; the coin and the
samples come from the run's key and step (exact resume).

Writes `WORKDIR/final` (the model's variables and what it is), `WORKDIR/metrics.jsonl`
(training and validation curves) and `WORKDIR/final_metrics.json` (`valid` and `test`:
per-token loss, perplexity, bits per byte, accuracy, and with a teacher its agreement).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import time

import jax
import ml_collections
import numpy as np
import optax

from jaxkd import distributed, losses, models, on_policy, on_policy_replay, seqkd
from jaxkd.data import text
from jaxkd.distill import create_distill_state, make_distill_step
from jaxkd.language import evaluate_lm, make_lm_eval_step, summarize_lm, train_batches
from jaxkd.loop import fit
from jaxkd.parallel import Parallel
from jaxkd.state import tree_sha256
from jaxkd.steps import build_update

# What makes two runs the same run (checked on resume) and a model what it is.
_RUN_KEYS = ('corpus', 'tokenizer', 'vocab_size', 'seq_len', 'model', 'model_overrides',
             'batch_size', 'num_steps', 'learning_rate', 'warmup_steps', 'weight_decay',
             'grad_clip', 'seed', 'terms', 'vocab_chunk', 'max_train_rows', 'eval_every',
             'seqkd', 'on_policy')


def default_config() -> ml_collections.ConfigDict:
  """The recipe's settings (a teacher of the table: `lm_teacher`, 3,000 steps)."""
  return ml_collections.ConfigDict({
      'corpus': 'pydoc', 'tokenizer': 'bpe', 'vocab_size': 2048, 'seq_len': 256,
      'model': 'lm_student', 'model_overrides': {}, 'dtype': 'float32',
      'batch_size': 16, 'num_steps': 3000, 'learning_rate': 3e-3, 'warmup_steps': 100,
      'weight_decay': 0.1, 'grad_clip': 1.0, 'seed': 0,
      'teacher_dir': '', 'terms': {}, 'vocab_chunk': 0,
      'parallel': 'jit', 'log_every': 50, 'eval_every': 500, 'checkpoint_every': 500,
      'max_train_rows': 0, 'max_eval_rows': 0, 'eval_batch_size': 32, 'stop_at': 0,
      'teacher_cache': {},
      'seqkd': {},  # sequence-level KD: jaxkd.seqkd.DEFAULTS's settings; {} is off
      'on_policy': {},  # on-policy distillation: jaxkd.on_policy.DEFAULTS's; {} is off
  })


# `config.teacher_cache`'s settings and their defaults ('kind', 'k' and 'dir' are required).
CACHE_SETTINGS = {'kind': None, 'k': None, 'dir': None, 'value_dtype': 'float32',
                  'batch_size': 16}


def _cache_settings(config, objective) -> dict:
  """`config.teacher_cache` checked against the objective, with the temperature it is
  written at (the reading term's), or {} for a live teacher."""
  from jaxkd.cache_lm import KINDS
  from jaxkd.distill import topk_temperature
  settings = _plain(config.teacher_cache) or {}
  kinds = {getattr(term, 'cache_kind', None) for _, _, term in objective.terms} - {None}
  if not settings:
    if kinds:
      raise ValueError(f'The terms read a {sorted(kinds)[0]} teacher cache; set '
                       "config.teacher_cache = {'kind': ..., 'k': ..., 'dir': ...}.")
    return {}
  unknown = sorted(set(settings) - set(CACHE_SETTINGS))
  missing = sorted(k for k, v in CACHE_SETTINGS.items() if v is None and not settings.get(k))
  if unknown or missing:
    raise ValueError(f'config.teacher_cache={settings}: unknown {unknown}, missing {missing}; '
                     f'valid settings: {sorted(CACHE_SETTINGS)}.')
  settings = {**CACHE_SETTINGS, **settings}
  if settings['kind'] not in KINDS:
    raise ValueError(f"config.teacher_cache.kind={settings['kind']!r}; valid: {KINDS}.")
  if not config.teacher_dir:
    raise ValueError('config.teacher_cache needs config.teacher_dir: the teacher the cache is '
                     'written from and checked against.')
  if config.vocab_chunk and settings['kind'] == 'topk':
    raise ValueError('A top-k teacher cache is completed on full student logits: unset '
                     'vocab_chunk (a sampled cache runs in chunks).')
  if settings['kind'] == 'sampled':
    readers = [term for _, _, term in objective.terms if term.name == 'sampled_kd']
    if objective.needs_teacher or len(readers) != 1:
      raise ValueError(f'A sampled teacher cache teaches through one sampled_kd term and no '
                       f'live-teacher term; the terms are {[n for n, _, _ in objective.terms]}.')
    temperature = float(readers[0].temperature)
  else:
    temperature = topk_temperature(objective)
  return {**settings, 'temperature': temperature}


def _cached_rows(settings: dict, teacher, teacher_vars, train: dict, *, seed: int,
                 provenance: dict) -> dict:
  """The teacher cache's targets for the training rows (written first if the folder has
  no cache), after its provenance is checked against this run's."""
  import hashlib
  from jaxkd import cache_lm
  inputs = train['tokens'][:, :-1]
  digest = hashlib.sha256()
  for name in ('tokens', 'mask'):
    digest.update(np.ascontiguousarray(train[name]).tobytes())
  provenance = {**provenance, 'dataset_sha256': digest.hexdigest()}
  if cache_lm.read_provenance(settings['dir']) is None:
    cache_lm.write_token_cache(
        settings['dir'], lambda v, x: teacher.apply(v, x, train=False), teacher_vars, inputs,
        kind=settings['kind'], k=settings['k'], temperature=settings['temperature'],
        seed=seed, provenance=provenance, batch_size=settings['batch_size'],
        value_dtype=settings['value_dtype'])
  expected = {'kind': settings['kind'], 'k': settings['k'],
              'temperature': settings['temperature'], 'value_dtype': settings['value_dtype'],
              **provenance, 'num_rows': len(inputs), 'seq_len': inputs.shape[1]}
  rows, _ = cache_lm.read_token_cache(settings['dir'], expected=expected)
  return rows


def student_variant(variant: str, variants, *, default: str,
                    what: str) -> tuple[str, ml_collections.ConfigDict]:
  """`(variant, config)` for a named config's variant (`default` when empty; one of
  `variants`, else ValueError): the table's student settings (`lm_student`, 1,000 steps,
  evaluated and checkpointed every 250)."""
  variant = variant or default
  if variant not in variants:
    raise ValueError(f'Unknown {what} variant {variant!r}; known: {list(variants)}')
  config = default_config()
  config.update(model='lm_student', num_steps=1000, eval_every=250, checkpoint_every=250)
  return variant, config


def _plain(value):
  return value.to_dict() if hasattr(value, 'to_dict') else value


def _rows(config, split: str, limit: int) -> dict:
  rows = text.load(config.corpus, split, seq_len=config.seq_len + 1,
                   vocab_size=config.vocab_size, tokenizer=config.tokenizer)
  return {k: v[:limit] for k, v in rows.items()} if limit else rows


def _model(name: str, vocab: int, seq_len: int, overrides: dict, dtype: str):
  extra = {} if dtype == 'float32' else {'dtype': getattr(jax.numpy, dtype)}
  return models.build(name, num_classes=vocab, max_len=seq_len, **overrides, **extra)


def load_lm(directory: str, dtype: str = 'float32'):
  """`(model, variables, metadata)` of a model this recipe wrote (WORKDIR or WORKDIR/final)."""
  from jaxkd import checkpoint  # orbax is slow to import
  variables, meta = checkpoint.load_variables(directory)
  model = _model(meta['model'], meta['num_classes'], meta['seq_len'],
                 meta.get('model_overrides', {}), dtype)
  return model, variables, meta


def _optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  if not 0 <= config.warmup_steps < config.num_steps:
    raise ValueError(f'warmup_steps={config.warmup_steps} must be in [0, num_steps='
                     f'{config.num_steps}).')
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, max(config.warmup_steps, 1), max(config.num_steps, 2))
  tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                   optax.adamw(schedule, b2=0.95, weight_decay=config.weight_decay))
  return tx, schedule


def _check_on_policy(config, objective) -> dict | None:
  """`config.on_policy`'s checked settings (None when off), or one ValueError."""
  if not config.on_policy:
    return None
  settings = on_policy.check_settings(_plain(config.on_policy), seq_len=config.seq_len,
                                      batch_size=config.batch_size)
  if settings['adaptive'] and config.parallel != 'jit':
    raise ValueError(f"config.on_policy.adaptive keeps one replay buffer: set config.parallel="
                     f"'jit', not {config.parallel!r}.")
  if not config.teacher_dir or not objective.needs_teacher:
    names = [name for name, _, _ in objective.terms]
    raise ValueError(f'config.on_policy: the student learns a live teacher on its own samples;'
                     f' set config.teacher_dir and a term that reads the teacher (jsd, '
                     f'reverse_kl, skew_kl, kd), not only {names}.')
  return settings


def run(config, workdir: str) -> dict:
  """Trains `config.model` on `config.corpus` (no `teacher_dir`), or distils the model in
  `config.teacher_dir` into it with `config.terms` (by name, `jaxkd.losses.LOSSES`; default
  cross-entropy alone). Resumes from WORKDIR/checkpoints. Returns the final metrics.
  `config.stop_at` (< `num_steps`) stops there after a checkpoint, as a preemption would.
  `config.seqkd` (non-empty): train on the teacher's sequences (module docstring)."""
  start = time.perf_counter()
  if config.teacher_cache and (config.seqkd or config.on_policy):
    raise ValueError('config.teacher_cache is set beside config.seqkd or config.on_policy: a '
                     "stored cache holds the teacher's targets on the corpus rows, which SeqKD "
                     "and on-policy steps replace; use one of them.")
  os.makedirs(workdir, exist_ok=True)
  terms = _plain(config.terms) or {'ce': {'weight': 1.0}}
  objective = losses.build_objective(terms)
  on_policy_settings = _check_on_policy(config, objective)  # before any data loads
  parallel = Parallel(config.parallel)
  train = _rows(config, 'train', config.max_train_rows)
  evals = {split: _rows(config, split, config.max_eval_rows) for split in ('valid', 'test')}
  info = text.stats(config.corpus, 'train', vocab_size=config.vocab_size,
                    tokenizer=config.tokenizer)
  bytes_per_token = {split: text.stats(config.corpus, split, vocab_size=config.vocab_size,
                                       tokenizer=config.tokenizer)['bytes_per_token']
                     for split in evals}
  vocab = info['vocab_size']
  tok = text.load_tokenizer(config.corpus, vocab_size=config.vocab_size,
                            tokenizer=config.tokenizer)
  tokenizer_sha256 = tok.fingerprint
  seqkd_settings = (seqkd.check_settings(_plain(config.seqkd), seq_len=config.seq_len)
                    if config.seqkd else None)
  overrides = _plain(config.model_overrides) or {}
  student = _model(config.model, vocab, config.seq_len, overrides, config.dtype)
  teacher, teacher_vars, fingerprints = None, (), []
  if config.teacher_dir:
    teacher, teacher_vars, teacher_meta = load_lm(config.teacher_dir, config.dtype)
    if teacher_meta['tokenizer_sha256'] != tokenizer_sha256:
      raise ValueError(f"Teacher {config.teacher_dir!r} reads {teacher_meta['corpus']} with "
                       f"the {teacher_meta['tokenizer']} tokenizer "
                       f"{teacher_meta['tokenizer_sha256']}; this run reads {config.corpus} "
                       f"with {config.tokenizer} {tokenizer_sha256}: distil with the teacher's "
                       'tokenizer.')
    fingerprints = [tree_sha256(teacher_vars)]
  elif seqkd_settings:
    raise ValueError('config.seqkd: the teacher writes the sequences; set config.teacher_dir.')
  elif objective.needs_teacher:
    raise ValueError(f'The terms {sorted(terms)} read a teacher; set config.teacher_dir.')
  cache_settings = _cache_settings(config, objective)
  if cache_settings:  # the teacher teaches through its stored targets, not live
    train = {**train, **_cached_rows(
        cache_settings, teacher, teacher_vars, train, seed=config.seed,
        provenance={'teacher_fingerprint': fingerprints[0],
                    'tokenizer_fingerprint': tokenizer_sha256})}
  seqkd_record = {}
  if seqkd_settings:
    directory = seqkd_settings['data_dir'] or os.path.join(workdir, 'seqkd_data')
    train = seqkd.teacher_dataset(
        directory, teacher=teacher, teacher_variables=teacher_vars, rows=train,
        settings=seqkd_settings, sep_id=tok.sep_id, pad_id=tok.pad_id,
        provenance={'teacher_sha256': fingerprints[0], 'tokenizer_sha256': tokenizer_sha256,
                    'corpus': config.corpus, 'split': 'train', 'split_sha256': info['sha256'],
                    'seq_len': config.seq_len, 'max_train_rows': config.max_train_rows,
                    'dtype': config.dtype})  # the teacher decodes in the run's dtype
    seqkd_record = {'data_dir': directory, 'rows': len(train['tokens']),
                    'continuation_tokens': int(train['mask'].sum())}
  # SeqKD with cross-entropy alone trains on the teacher's sequences without running it.
  live = teacher if teacher is not None and not cache_settings and (
      objective.needs_teacher or not seqkd_settings) else None
  state_teacher = teacher if cache_settings else live
  tx, schedule = _optimizer(config)
  shape = (1, config.seq_len)
  state = create_distill_state(student, tx, objective,
                               teachers=[state_teacher] if state_teacher else None,
                               teacher_variables=[teacher_vars] if state_teacher else None,
                               seed=config.seed, input_shape=shape)
  chunk = config.vocab_chunk or None
  if cache_settings.get('kind') == 'topk':
    step = make_distill_step(student=student, teachers=None, tx=tx, objective=objective,
                             learning_rate_fn=schedule, parallel=parallel, cached=True)
    step_args = ((),)
  elif live is not None:
    wrap = None if not on_policy_settings else functools.partial(
        on_policy.wrap_update, student=student, settings=on_policy_settings,
        sep_id=tok.sep_id, pad_id=tok.pad_id, batch_sharding=parallel.batch_sharding(),
        num_steps=config.num_steps)
    step = make_distill_step(student=student, teachers=live, tx=tx, objective=objective,
                             learning_rate_fn=schedule, parallel=parallel, vocab_chunk=chunk,
                             wrap_update=wrap)
    step_args = (parallel.place_teacher(teacher_vars),)
  else:
    step = parallel.compile(build_update(model=student, tx=tx, objective=objective,
                                         learning_rate_fn=schedule, vocab_chunk=chunk))
    step_args = ()
  eval_step = make_lm_eval_step(model=student, teacher=teacher, parallel=parallel,
                                vocab_chunk=chunk)
  placed_teacher = parallel.replicate(teacher_vars) if teacher else ()

  def evaluate_split(state, split):
    variables = {'params': state.params}
    sums = evaluate_lm(eval_step, variables, evals[split], batch_size=config.eval_batch_size,
                       parallel=parallel, teacher_variables=placed_teacher)
    return summarize_lm(sums, bytes_per_token=bytes_per_token[split])

  def evaluate(state, epoch):
    del epoch
    return {f'valid_{k}': v for k, v in evaluate_split(state, 'valid').items()}

  after_evaluate = None
  if on_policy_settings and on_policy_settings['adaptive']:  # DistiLLM's replay buffer
    state = on_policy_replay.create_replay_state(
        state, tx, rows=on_policy_settings['buffer_rows'], width=config.seq_len + 1,
        settings=on_policy_settings, reference_loss=evaluate_split(state, 'valid')['loss'])

    def after_evaluate(state, record):
      replay = on_policy_replay.raise_fraction(jax.device_get(state.replay),
                                               record['valid_loss'], settings=on_policy_settings)
      return state.replace(replay=parallel.replicate(replay))

  batches, steps_per_epoch = train_batches(train, batch_size=config.batch_size,
                                           seed=config.seed, steps_per_epoch=config.eval_every)
  metadata = {key: _plain(config[key]) for key in _RUN_KEYS}
  metadata.update(recipe='language_model', teacher_fingerprints=fingerprints,
                  teacher_dirs=[config.teacher_dir] if config.teacher_dir else [],
                  objective=objective.describe(), num_classes=vocab,
                  tokenizer_sha256=tokenizer_sha256)
  if cache_settings:
    metadata['teacher_cache'] = cache_settings
  from jaxkd import checkpoint  # orbax is slow to import
  checkpointer = (checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                          metadata=metadata)
                  if config.checkpoint_every else contextlib.nullcontext())
  with checkpointer as manager:
    state = fit(state=parallel.replicate(state), step_fn=step, batches=batches,
                steps_per_epoch=steps_per_epoch, num_steps=config.stop_at or config.num_steps,
                batch_size=config.batch_size, workdir=workdir, parallel=parallel,
                step_args=step_args, evaluate=evaluate, log_every=config.log_every,
                checkpointer=manager, checkpoint_every=config.checkpoint_every,
                after_evaluate=after_evaluate)
  if config.stop_at and config.stop_at < config.num_steps:
    return {'stopped_at': config.stop_at}  # a pause (as a preemption would): resume later
  state = parallel.unreplicate(state)
  final = {split: evaluate_split(state, split) for split in ('valid', 'test')}
  variables = jax.device_get({'params': state.params})
  checkpoint.save_variables(os.path.join(workdir, 'final'), variables,
                            metadata={**metadata, 'model_overrides': overrides},
                            step=config.num_steps)
  if seqkd_record:
    final['seqkd'] = seqkd_record
  result = {**final, 'steps': config.num_steps, 'seconds': time.perf_counter() - start,
            'params_sha256': tree_sha256(variables),
            'parameters': int(sum(np.size(x) for x in jax.tree.leaves(variables)))}
  if distributed.is_main():
    with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
      json.dump(result, f, indent=1)
  return result
