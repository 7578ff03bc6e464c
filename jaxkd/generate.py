"""Decoding for the zoo's language models with a key-value cache: greedy, temperature, top-k
and top-p sampling, and beam search, batched over prompts and compiled with `jax.jit`.

    out = generate.sample(model, variables, prompts, lengths, key=jax.random.key(0),
                          max_new_tokens=64, temperature=0.8, top_p=0.95, stop_token=sep_id)
    out.tokens     # int32 [B, P + 64]: row b's prompt (its first lengths[b] tokens), then its
                   # continuation, then pad_token
    out.mask       # bool [B, P + 64]: True at the generated positions (a stop token included)
    out.log_prob   # float32 [B]: sum of log p(token | before) over the generated tokens
    generate.greedy(model, variables, prompts, lengths, max_new_tokens=64)
    generate.beam_search(model, variables, prompts, lengths, num_beams=4, max_new_tokens=64)
    generate.as_rows(out)   # {'tokens', 'mask'}: training rows, the loss on the continuation

`prompts` `[B, P]` are right-padded: row `b` holds its prompt in its first `lengths[b]`
(>= 1) tokens (`lengths` default `P`; a `[B, P]` mask of ones-then-zeros also works). A
prompt is prefilled once (`Transformer.decode` from position 0) and each new token costs one
position; the cache holds `P + max_new_tokens` positions (at most the model's `max_len`).
A row stops after emitting `stop_token` (for packed text, the tokenizer's `sep_id`, the
documents' separator) or after `max_new_tokens`; the loop ends when every row has stopped.
`log_prob` is under the model itself (temperature 1, no truncation), whatever the sampler:
the sequence's log-probability, what beam search maximises. Nothing returned carries a
gradient (the variables are read through `stop_gradient`). The functions may be called
inside a jitted function (lengths are then checked only when concrete).

Randomness: step `i` draws from `jax.random.fold_in(key, i)`, so the same key, prompts and
settings give the same tokens.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.models.transformer import init_cache


class Generation(NamedTuple):
  """Decoded rows: `tokens` int32 `[B, P + N]`, `mask` bool `[B, P + N]` (generated
  positions), `log_prob` float32 `[B]` (the continuation's log-probability)."""

  tokens: jax.Array
  mask: jax.Array
  log_prob: jax.Array


def as_rows(generation: Generation) -> dict:
  """Decoded rows as training rows in `jaxkd.data.text.pack`'s convention: `{'tokens' int32
  [B, S], 'mask' float32 [B, S]}` with `mask[:, j] = 1` where `tokens[:, j + 1]` was generated,
  so `jaxkd.language.lm_batch` weights the continuation only (the prompt is the condition).
  Traceable: an on-policy step may call it on its own samples."""
  generated = generation.mask[:, 1:].astype(jnp.float32)
  return {'tokens': generation.tokens,
          'mask': jnp.pad(generated, ((0, 0), (0, 1)))}


def filter_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """The logits sampling draws from: `logits / temperature`, then every token outside the
  `top_k` largest (0: no limit) set to -inf, then every token outside the nucleus set to
  -inf: the nucleus is the smallest set of most probable tokens whose probability (after
  the top-k cut) reaches `top_p` (Holtzman et al. 2020), so the most probable token is
  always kept. `[..., V] -> float32 [..., V]`."""
  logits = jnp.asarray(logits, jnp.float32) / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if top_p < 1.0:
    probs = jax.nn.softmax(logits, axis=-1)
    ordered = -jnp.sort(-probs, axis=-1)
    before = jnp.cumsum(ordered, axis=-1) - ordered  # mass of the more probable tokens
    smallest_kept = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), -1, keepdims=True)
    logits = jnp.where(probs >= smallest_kept, logits, -jnp.inf)
  return logits


def _prompt_lengths(prompts, prompt_lengths) -> jax.Array:
  """int32 `[B]` lengths, from lengths, a `[B, P]` mask, or None (all `P`); checked when
  concrete."""
  prompts = jnp.asarray(prompts)
  if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer):
    raise ValueError(f'prompts must be integer token ids [batch, length], not '
                     f'{prompts.dtype} {prompts.shape}.')
  batch, length = prompts.shape
  if prompt_lengths is None:
    return jnp.full((batch,), length, jnp.int32)
  lengths = jnp.asarray(prompt_lengths)
  if lengths.ndim == 2:
    lengths = jnp.sum(lengths != 0, axis=-1)
  if lengths.shape != (batch,):
    raise ValueError(f'prompt_lengths must be [batch] = [{batch}] lengths or a [batch, length] '
                     f'mask, not shape {jnp.shape(prompt_lengths)}.')
  if not isinstance(lengths, jax.core.Tracer):
    concrete = np.asarray(lengths)
    if concrete.min() < 1 or concrete.max() > length:
      raise ValueError(f'prompt_lengths must be in [1, {length}] (a prompt of at least one '
                       f'token), not {concrete.tolist()}.')
  return lengths.astype(jnp.int32)


def _check(max_new_tokens, stop_token, pad_token, vocab):
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens={max_new_tokens}: generate at least one token.')
  for name, token in (('stop_token', stop_token), ('pad_token', pad_token)):
    if token is not None and not 0 <= token < vocab:
      raise ValueError(f'{name}={token} is not a token id in [0, {vocab}).')


def _prefill(model, variables, prompts, lengths, total):
  """`(logits [B, V] at each prompt's last token, cache of `total` positions)`."""
  cache = init_cache(model, batch_size=prompts.shape[0], length=total)
  logits, cache = model.apply(variables, prompts.astype(jnp.int32), cache,
                              jnp.zeros_like(lengths), method='decode')
  return jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0], cache


def _start_tokens(prompts, lengths, total, pad_token):
  """int32 `[B, total]`: each prompt's tokens, then `pad_token`."""
  in_prompt = jnp.arange(prompts.shape[1]) < lengths[:, None]
  tokens = jnp.full((prompts.shape[0], total), pad_token, jnp.int32)
  return tokens.at[:, :prompts.shape[1]].set(jnp.where(in_prompt, prompts, pad_token))


def _running(max_new_tokens):
  """The loops' condition on `(step, _, _, _, done, ...)`: steps left and a row running."""
  return lambda carry: (carry[0] < max_new_tokens) & ~jnp.all(carry[4])


def _generated_mask(lengths, counts, total):
  positions = jnp.arange(total)
  return (positions >= lengths[..., None]) & (positions < (lengths + counts)[..., None])


def sample(model: nn.Module, variables, prompts, prompt_lengths=None, *,
           key: jax.Array | None = None, max_new_tokens: int, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, stop_token: int | None = None,
           pad_token: int = 0) -> Generation:
  """Samples continuations of `prompts` (see the module docstring for shapes and stopping).

  Args:
    model, variables: a `jaxkd.models.transformer.Transformer` and its variables.
    prompts: int `[B, P]`, right-padded; prompt_lengths: int `[B]` (or a `[B, P]` mask).
    key: a `jax.random.key`; step `i` draws from `fold_in(key, i)`. Unused (may be None) at
      temperature 0.
    max_new_tokens: most tokens generated per row.
    temperature: divides the logits; 0 is greedy (argmax of the logits, top-k/top-p unused).
    top_k: sample among the `top_k` most probable tokens (0: all).
    top_p: sample within the nucleus of probability `top_p` (1: all); see `filter_logits`.
    stop_token: a row ends after emitting it (None: never).
    pad_token: fills the positions after a row's end (outside the mask).

  Returns:
    A `Generation`.
  """
  if temperature < 0:
    raise ValueError(f'temperature={temperature} must be >= 0 (0: greedy).')
  if top_k < 0:
    raise ValueError(f'top_k={top_k} must be >= 0 (0: no limit).')
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f'top_p={top_p} must be in (0, 1] (1: no nucleus cut).')
  if temperature > 0 and key is None:
    raise ValueError('Sampling at temperature > 0 needs a key (jax.random.key(seed)).')
  _check(max_new_tokens, stop_token, pad_token, model.num_classes)
  lengths = _prompt_lengths(prompts, prompt_lengths)
  if key is None:
    key = jax.random.key(0)  # greedy draws nothing
  return _sample(model, variables, jnp.asarray(prompts, jnp.int32), lengths, key,
                 max_new_tokens=max_new_tokens, temperature=float(temperature),
                 top_k=int(top_k), top_p=float(top_p), stop_token=stop_token,
                 pad_token=pad_token)


def greedy(model: nn.Module, variables, prompts, prompt_lengths=None, *, max_new_tokens: int,
           stop_token: int | None = None, pad_token: int = 0) -> Generation:
  """Greedy decoding: `sample` at temperature 0 (each new token the argmax of the logits)."""
  return sample(model, variables, prompts, prompt_lengths, max_new_tokens=max_new_tokens,
                temperature=0.0, stop_token=stop_token, pad_token=pad_token)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'temperature',
                                             'top_k', 'top_p', 'stop_token', 'pad_token'))
def _sample(model, variables, prompts, lengths, key, *, max_new_tokens, temperature, top_k,
            top_p, stop_token, pad_token):
  variables = jax.lax.stop_gradient(variables)
  batch, prompt_len = prompts.shape
  total = prompt_len + max_new_tokens
  logits, cache = _prefill(model, variables, prompts, lengths, total)
  tokens = _start_tokens(prompts, lengths, total, pad_token)
  rows = jnp.arange(batch)

  def choose(logits, step):
    if temperature == 0:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(jax.random.fold_in(key, step), filtered).astype(jnp.int32)

  def body(carry):
    step, logits, cache, tokens, done, counts, log_prob = carry
    token = jnp.where(done, pad_token, choose(logits, step))
    token_log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], -1)[:, 0]
    log_prob = log_prob + jnp.where(done, 0.0, token_log_prob)
    position = lengths + step
    tokens = tokens.at[rows, position].set(token)
    counts = counts + (~done).astype(jnp.int32)
    if stop_token is not None:
      done = done | (token == stop_token)
    logits, cache = model.apply(variables, token[:, None], cache, position, method='decode')
    return step + 1, logits[:, 0], cache, tokens, done, counts, log_prob

  carry = (jnp.int32(0), logits, cache, tokens, jnp.zeros(batch, bool),
           jnp.zeros(batch, jnp.int32), jnp.zeros(batch, jnp.float32))
  _, _, _, tokens, _, counts, log_prob = jax.lax.while_loop(_running(max_new_tokens), body, carry)
  return Generation(tokens, _generated_mask(lengths, counts, total), log_prob)


def beam_search(model: nn.Module, variables, prompts, prompt_lengths=None, *, num_beams: int,
                max_new_tokens: int, length_penalty: float = 0.0,
                stop_token: int | None = None, pad_token: int = 0) -> Generation:
  """Beam search: the `num_beams` most probable continuations of each prompt kept at each
  step, the best returned (what sequence-level KD trains on; Kim & Rush 2016).

  A hypothesis that emits `stop_token` is finished: it keeps its place in the beam, extended
  by `pad_token` at no cost, and competes with the unfinished ones by its log-probability.
  At the end the beams are ranked by `log_prob / generated_tokens ** length_penalty` (0: the
  plain log-probability; > 0 favors longer continuations, as in GNMT and Hugging Face).
  With `num_beams=1` this is greedy decoding. Arguments otherwise as `sample`'s.

  Returns:
    A `Generation` of each prompt's best hypothesis; `log_prob` is its log-probability.
  """
  if not 1 <= num_beams <= model.num_classes:
    raise ValueError(f'num_beams={num_beams} must be in [1, vocabulary {model.num_classes}].')
  _check(max_new_tokens, stop_token, pad_token, model.num_classes)
  lengths = _prompt_lengths(prompts, prompt_lengths)
  return _beam_search(model, variables, jnp.asarray(prompts, jnp.int32), lengths,
                      num_beams=num_beams, max_new_tokens=max_new_tokens,
                      length_penalty=float(length_penalty), stop_token=stop_token,
                      pad_token=pad_token)


@functools.partial(jax.jit, static_argnames=('model', 'num_beams', 'max_new_tokens',
                                             'length_penalty', 'stop_token', 'pad_token'))
def _beam_search(model, variables, prompts, lengths, *, num_beams, max_new_tokens,
                 length_penalty, stop_token, pad_token):
  variables = jax.lax.stop_gradient(variables)
  batch, prompt_len = prompts.shape
  beams, vocab = num_beams, model.num_classes
  total = prompt_len + max_new_tokens
  logits, cache = _prefill(model, variables, prompts, lengths, total)
  # Beams live as rows b * beams + k of the cache; at first only beam 0 is alive, so the
  # first step's top-k picks distinct tokens.
  cache = jax.tree.map(lambda x: jnp.repeat(x, beams, axis=0), cache)
  logits = jnp.repeat(logits[:, None], beams, axis=1)
  tokens = jnp.repeat(_start_tokens(prompts, lengths, total, pad_token)[:, None], beams, 1)
  scores = jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf) * jnp.ones((batch, 1))
  only_pad = jnp.where(jnp.arange(vocab) == pad_token, 0.0, -jnp.inf)
  flat_lengths = jnp.repeat(lengths, beams)

  def body(carry):
    step, logits, cache, tokens, done, counts, scores = carry
    log_probs = jnp.where(done[..., None], only_pad, jax.nn.log_softmax(logits))
    candidates = (scores[..., None] + log_probs).reshape(batch, beams * vocab)
    scores, index = jax.lax.top_k(candidates, beams)
    parent, token = index // vocab, (index % vocab).astype(jnp.int32)
    take = lambda x: jnp.take_along_axis(x, parent.reshape(  # noqa: E731
        parent.shape + (1,) * (x.ndim - 2)), axis=1)
    tokens, done, counts = take(tokens), take(done), take(counts)
    flat_parent = (jnp.arange(batch)[:, None] * beams + parent).reshape(-1)
    cache = jax.tree.map(lambda x: x[flat_parent], cache)
    position = lengths[:, None] + step
    tokens = jnp.where(jnp.arange(total) == position[..., None], token[..., None], tokens)
    counts = counts + (~done).astype(jnp.int32)
    if stop_token is not None:
      done = done | (token == stop_token)
    logits, cache = model.apply(variables, token.reshape(-1, 1), cache, flat_lengths + step,
                                method='decode')
    return (step + 1, logits.reshape(batch, beams, vocab), cache, tokens, done, counts, scores)

  carry = (jnp.int32(0), logits, cache, tokens, jnp.zeros((batch, beams), bool),
           jnp.zeros((batch, beams), jnp.int32), scores)
  _, _, _, tokens, _, counts, scores = jax.lax.while_loop(_running(max_new_tokens), body, carry)
  ranking = scores / jnp.maximum(counts, 1).astype(jnp.float32) ** length_penalty
  best = jnp.argmax(ranking, axis=1)
  pick = lambda x: jnp.take_along_axis(  # noqa: E731
      x, best.reshape((batch, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]
  counts = pick(counts)
  return Generation(pick(tokens), _generated_mask(lengths, counts, total), pick(scores))
