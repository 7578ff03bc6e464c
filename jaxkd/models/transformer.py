"""A decoder-only transformer language model: pre-LayerNorm, rotary positions, tied embeddings.

    model = jaxkd.models.build('lm_student', num_classes=tokenizer.vocab_size)
    variables = model.init({'params': key}, tokens)          # int tokens [B, L]
    logits = model.apply(variables, tokens)                   # float32 [B, L, V]
    hidden, embedding = model.apply(variables, tokens, method='hidden')
    # hidden [B, L, D] (after the final LayerNorm), embedding float32 [V, D]:
    # unembed(hidden, embedding) == logits, so a loss can take the vocabulary in chunks.
    cache = init_cache(model, batch_size=B, length=S)        # keys and values, zeros
    logits, cache = model.apply(variables, tokens, cache, start, method='decode')
    # tokens [B, T] at positions start[b] + 0..T-1, reading the cached keys/values of
    # positions < start[b] and writing theirs: a prompt is prefilled once (start = 0), then
    # each new token costs one position (jaxkd.generate).

Position `j`'s logits predict token `j + 1` (`jaxkd.data.text.pack`'s convention). Modules
(paths for `jaxkd.models.features` taps): `embed`, `block<i>` (the residual stream after block
`i`), `block<i>/norm1`, `block<i>/attention` (its output projection), `block<i>/attention/qkv`
(`[B, L, 3, heads, head_dim]`, queries and keys before the rotation), `block<i>/attention/probs`
(float32 `[B, heads, L, L]`), `block<i>/norm2`, `block<i>/mlp`, `norm`.

Attention runs through `jaxkd.ops`' `causal_attention`: `jax.nn.dot_product_attention` (fused
kernels where the platform has them), or on the CPU the probabilities then one product (XLA:CPU
runs it faster). Neither returns the probabilities, so `probs` computes them again, and only
when intermediates are captured: a plain `apply` never does, and under `jit` XLA drops them
when no tap reads them.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd import ops

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


def rope(x: jax.Array, positions: jax.Array, *, base: float = 10_000.0) -> jax.Array:
  """Rotary position embedding (Su et al. 2021) of `x` `[..., L, heads, head_dim]`.

  Feature pairs `(x_i, x_{i + head_dim/2})` turn by `positions * base^(-2i / head_dim)`, so
  `rope(q, m) . rope(k, n)` depends on `m - n` only. Computed in float32, returned in x's dtype.
  """
  half = x.shape[-1] // 2
  if 2 * half != x.shape[-1]:
    raise ValueError(f'Rotary positions need an even head dimension, not {x.shape[-1]}.')
  freqs = jnp.asarray(base ** (-np.arange(half) / half), jnp.float32)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * freqs  # [..., L, half]
  cos, sin = jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def unembed(hidden: jax.Array, embedding: jax.Array) -> jax.Array:
  """Tied output layer: float32 logits `hidden @ embedding.T`, in the hidden states' dtype
  with float32 accumulation; `[..., D] x [V, D] -> [..., V]`."""
  return jnp.einsum('...d,vd->...v', hidden, embedding.astype(hidden.dtype),
                    preferred_element_type=jnp.float32)


def init_cache(model: nn.Module, *, batch_size: int, length: int) -> list[dict]:
  """Zero keys and values for `model.decode`: per block `{'keys', 'values'}` `[batch_size,
  length, heads, head_dim]` in the model's compute dtype; `length` is the longest sequence
  (prompt and new tokens) the cache will hold."""
  shape = (batch_size, length, model.heads, model.width // model.heads)
  return [{'keys': jnp.zeros(shape, model.dtype), 'values': jnp.zeros(shape, model.dtype)}
          for _ in range(model.depth)]


# Causal `softmax(q k^T / sqrt(head_dim))`: `[B, L, N, H] x2 -> float32 [B, N, L, L]`.
attention_probs = ops.causal_attention_probs


class AttentionProbs(nn.Module):
  """The attention probabilities as a module output, so a tap can read them by path."""

  @nn.compact
  def __call__(self, queries, keys):
    return attention_probs(queries, keys)


def _dense(features, dtype, name, axis=-1):
  return nn.DenseGeneral(features, axis=axis, dtype=dtype, param_dtype=jnp.float32, name=name)


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with rotary positions; `[B, L, D] -> [B, L, D]`."""

  width: int
  heads: int
  rope_base: float = 10_000.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, positions, cache=None):
    """`[B, L, D] -> [B, L, D]`; with a `cache` (`{'keys', 'values'}` `[B, S, heads,
    head_dim]`) and `positions` `[B, T]` (consecutive per row), `(out, updated cache)`."""
    if self.width % self.heads:
      raise ValueError(f'width={self.width} is not a multiple of heads={self.heads}.')
    qkv = _dense((3, self.heads, self.width // self.heads), self.dtype, 'qkv')(x)
    queries, keys, values = (qkv[:, :, i] for i in range(3))
    queries = rope(queries, positions, base=self.rope_base)
    keys = rope(keys, positions, base=self.rope_base)
    project = _dense(self.width, self.dtype, 'out', axis=(-2, -1))
    if cache is None:
      if self.is_mutable_collection('intermediates'):  # a tap may read them
        AttentionProbs(name='probs')(queries, keys)
      return project(ops.current().causal_attention(queries, keys, values))
    write = jax.vmap(lambda old, new, start: jax.lax.dynamic_update_slice_in_dim(
        old, new.astype(old.dtype), start, axis=0))
    cache = {'keys': write(cache['keys'], keys, positions[:, 0]),
             'values': write(cache['values'], values, positions[:, 0])}
    # Every slot up to a query's position was written (prefill, then one per step); later
    # slots hold stale or padded keys and are masked.
    visible = jnp.arange(cache['keys'].shape[1]) <= positions[:, :, None]  # [B, T, S]
    out = jax.nn.dot_product_attention(queries, cache['keys'].astype(queries.dtype),
                                       cache['values'].astype(queries.dtype),
                                       mask=visible[:, None])
    return project(out), cache


class FeedForward(nn.Module):
  """Dense -> GELU -> dense, `hidden` units inside."""

  width: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(_dense(self.hidden, self.dtype, 'up')(x))
    return _dense(self.width, self.dtype, 'down')(x)


class Block(nn.Module):
  """Pre-LayerNorm residual block: `x + attention(norm1(x))`, then `+ mlp(norm2(x))`."""

  width: int
  heads: int
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  rope_base: float = 10_000.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, positions, *, train: bool = False, cache=None):
    """`[B, L, D] -> [B, L, D]`, or `(out, updated cache)` given a `cache` (see attention)."""
    def norm(name):
      return nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name=name)

    def dropout(y):
      return nn.Dropout(self.dropout_rate)(y, deterministic=not train) if self.dropout_rate else y

    attention = CausalSelfAttention(self.width, self.heads, self.rope_base, self.dtype,
                                    name='attention')
    mixed = attention(norm('norm1')(x), positions, cache)
    if cache is not None:
      mixed, cache = mixed
    x = x + dropout(mixed)
    mlp = FeedForward(self.width, self.mlp_ratio * self.width, self.dtype, name='mlp')
    x = x + dropout(mlp(norm('norm2')(x)))
    return x if cache is None else (x, cache)


class Transformer(nn.Module):
  """Decoder-only language model; see the module docstring for calls and tap paths.

  `num_classes` is the vocabulary size (the zoo's name for the output width). Parameters are
  float32; `dtype` is the compute dtype (e.g. `jnp.bfloat16`); logits are always float32.
  """

  num_classes: int
  width: int = 256
  depth: int = 4
  heads: int = 4
  mlp_ratio: int = 4
  max_len: int = 1024
  dropout_rate: float = 0.0
  rope_base: float = 10_000.0
  dtype: Any = jnp.float32

  def hidden(self, tokens, *, train: bool = False, positions=None):
    """`(hidden [B, L, D] after the final LayerNorm, embedding float32 [V, D])`.

    `positions` (`[L]` or `[B, L]`, default `0..L-1`) place the tokens for the rotations.
    """
    if tokens.shape[-1] > self.max_len:
      raise ValueError(f'{tokens.shape[-1]} tokens exceed max_len={self.max_len}.')
    if positions is None:
      positions = jnp.arange(tokens.shape[-1])
    hidden, embedding, _ = self._forward(tokens, train, positions, None)
    return hidden, embedding

  def decode(self, tokens, cache, start):
    """`(float32 logits [B, T, V], updated cache)`: `tokens [B, T]` placed at positions
    `start[b] + 0..T-1` (`start` int `[B]`), attending to the cached keys/values of the
    positions before them and to each other, causally.

    `cache`: `init_cache`'s (a list over blocks of `{'keys', 'values'}` `[B, S,
    heads, head_dim]`, `S <= max_len`), holding every position before `start[b]` of row `b`;
    the returned one holds these tokens' too. Equals the full pass over the whole sequence
    (tests/test_generate.py). No dropout: decoding is inference.
    """
    length = cache[0]['keys'].shape[1]
    if length > self.max_len:
      raise ValueError(f'A cache of {length} positions exceeds max_len={self.max_len}.')
    positions = jnp.asarray(start, jnp.int32)[:, None] + jnp.arange(tokens.shape[-1])
    hidden, embedding, cache = self._forward(tokens, False, positions, cache)
    return unembed(hidden, embedding), cache

  @nn.compact
  def _forward(self, tokens, train, positions, cache):
    """`(hidden, embedding, updated cache or None)`: the one body of `hidden` and `decode`."""
    if not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
      raise TypeError(f'A language model reads integer token ids, not {tokens.dtype}.')
    embed = nn.Embed(self.num_classes, self.width, dtype=self.dtype, param_dtype=jnp.float32,
                     embedding_init=_EMBED_INIT, name='embed')
    x = embed(tokens)
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    updated = None if cache is None else []
    for i in range(self.depth):
      block = Block(self.width, self.heads, self.mlp_ratio, self.dropout_rate, self.rope_base,
                    self.dtype, name=f'block{i}')
      if cache is None:
        x = block(x, positions, train=train)
      else:
        x, block_cache = block(x, positions, train=train, cache=cache[i])
        updated.append(block_cache)
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name='norm')(x)
    return x, embed.embedding, updated

  def __call__(self, tokens, *, train: bool = False, positions=None):
    """float32 logits `[B, L, num_classes]`: position `j` predicts token `j + 1`."""
    return unembed(*self.hidden(tokens, train=train, positions=positions))

  @property
  def vocab_size(self) -> int:
    return self.num_classes
