"""The PyTorch peer of `lm_throughput.py`: jaxkd's decoder-only transformer and its three
language-model steps, written the way a PyTorch user would write them.

The model is `jaxkd.models.transformer.Transformer` layer for layer: pre-LayerNorm blocks
(epsilon 1e-6, as Flax's), rotary positions on queries and keys (the two halves of each head
turned, base 10,000), causal attention through `F.scaled_dot_product_attention`, a GELU
(tanh form, as `jax.nn.gelu`'s default) MLP 4x wide, a final LayerNorm and the output layer
tied to the embedding; the same parameter count (checked by `lm_throughput.py`), and
`load_jax_params` copies a jaxkd model's parameters in (the test compares the logits).
Steps: `torch.optim.AdamW` with optax's defaults (weight decay 1e-4), `loss.backward()`,
the teacher under `torch.no_grad()`, the loss per token weighted by the mask; the KD
objective is jaxkd's `0.5 CE + 0.5 T^2 KL(p_t || p_s)` at T = 1. `compile=True` wraps the
model in `torch.compile` (Inductor; its first steps compile).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_peer import param_count, set_threads  # noqa: F401  (set_threads: the benchmark's)

HARD_WEIGHT = 0.5
SOFT_WEIGHT = 0.5
TEMPERATURE = 1.0
# jaxkd's named sizes (`jaxkd.models`): depth, width, heads.
SIZES = {'lm_teacher': (4, 192, 4), 'lm_student': (2, 128, 4), 'transformer': (4, 256, 4)}


def rope(x: torch.Tensor, *, base: float = 10_000.0) -> torch.Tensor:
  """Rotary positions of `x` `[B, heads, L, head_dim]` (`jaxkd.models.transformer.rope`)."""
  half = x.shape[-1] // 2
  freqs = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
  angles = torch.arange(x.shape[-2], dtype=torch.float32, device=x.device)[:, None] * freqs
  cos, sin = angles.cos(), angles.sin()
  x1, x2 = x[..., :half], x[..., half:]
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Block(nn.Module):
  def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
    super().__init__()
    self.heads = heads
    self.norm1 = nn.LayerNorm(width, eps=1e-6)
    self.qkv = nn.Linear(width, 3 * width)
    self.out = nn.Linear(width, width)
    self.norm2 = nn.LayerNorm(width, eps=1e-6)
    self.up = nn.Linear(width, mlp_ratio * width)
    self.down = nn.Linear(mlp_ratio * width, width)

  def forward(self, x):
    batch, length, width = x.shape
    qkv = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, width // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, L, head_dim]
    y = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
    x = x + self.out(y.transpose(1, 2).reshape(batch, length, width))
    return x + self.down(F.gelu(self.up(self.norm2(x)), approximate='tanh'))


class Transformer(nn.Module):
  """Decoder-only language model: tokens `[B, L]` -> float32 logits `[B, L, vocab]`."""

  def __init__(self, vocab: int, depth: int, width: int, heads: int):
    super().__init__()
    self.embed = nn.Embedding(vocab, width)
    nn.init.normal_(self.embed.weight, std=0.02)
    self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
    self.norm = nn.LayerNorm(width, eps=1e-6)

  def forward(self, tokens):
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x)
    return self.norm(x) @ self.embed.weight.T  # the tied output layer


def build(name: str, vocab: int) -> Transformer:
  if name not in SIZES:
    raise ValueError(f'No PyTorch peer for {name!r}; known: {sorted(SIZES)}')
  return Transformer(vocab, *SIZES[name])


def load_jax_params(model: Transformer, params: dict) -> Transformer:
  """Copies a jaxkd `Transformer`'s `params` into `model` (same sizes); returns it."""
  def t(x):
    return torch.from_numpy(np.array(x, np.float32))

  def norm(module, p):
    module.weight.data, module.bias.data = t(p['scale']), t(p['bias'])

  def dense(module, p):  # Flax kernels are [in..., out...]; torch weights [out, in]
    out = module.weight.shape[0]
    module.weight.data = t(np.reshape(p['kernel'], (-1, out)).T)
    module.bias.data = t(np.reshape(p['bias'], -1))

  model.embed.weight.data = t(params['embed']['embedding'])
  for i, block in enumerate(model.blocks):
    p = params[f'block{i}']
    norm(block.norm1, p['norm1'])
    norm(block.norm2, p['norm2'])
    dense(block.qkv, p['attention']['qkv'])
    dense(block.out, p['attention']['out'])
    dense(block.up, p['mlp']['up'])
    dense(block.down, p['mlp']['down'])
  norm(model.norm, params['norm'])
  return model


def token_losses(student_logits, labels, teacher_logits=None):
  """Per-token `CE`, or `HARD_WEIGHT CE + SOFT_WEIGHT T^2 KL(p_t || p_s)` with a teacher."""
  vocab = student_logits.shape[-1]
  ce = F.cross_entropy(student_logits.reshape(-1, vocab), labels.reshape(-1),
                       reduction='none').view(labels.shape)
  if teacher_logits is None:
    return ce
  kl = F.kl_div(F.log_softmax(student_logits / TEMPERATURE, -1),
                F.log_softmax(teacher_logits / TEMPERATURE, -1),
                reduction='none', log_target=True).sum(-1)
  return HARD_WEIGHT * ce + SOFT_WEIGHT * TEMPERATURE ** 2 * kl


class Peer:
  """One mode (`student`, `online_kd`, `cached_kd`) in PyTorch: `run()` is one step."""

  def __init__(self, *, student: str, teacher: str, mode: str, vocab: int, batch: dict,
               learning_rate: float = 1e-3, compile: bool = False, seed: int = 0):
    if mode not in ('student', 'online_kd', 'cached_kd'):
      raise ValueError(f"mode must be 'student', 'online_kd' or 'cached_kd', got {mode!r}.")
    torch.manual_seed(seed)
    self.mode = mode
    self.tokens = torch.from_numpy(batch['tokens'].astype(np.int64))
    self.labels = torch.from_numpy(batch['label'].astype(np.int64))
    self.mask = torch.from_numpy(batch['mask'].astype(np.float32))
    self.student = build(student, vocab)
    self.param_count = param_count(self.student)
    self.teacher = build(teacher, vocab).eval() if mode == 'online_kd' else None
    self.teacher_logits = None
    if mode == 'cached_kd':
      self.teacher_logits = torch.from_numpy(np.array(batch['teacher_logits']))
    self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=learning_rate,
                                       weight_decay=1e-4)
    self.student_fn = torch.compile(self.student) if compile else self.student
    self.teacher_fn = (torch.compile(self.teacher) if compile and self.teacher is not None
                       else self.teacher)

  def sync(self):
    pass  # CPU: every call has finished when it returns

  def run(self):
    teacher_logits = self.teacher_logits
    if self.teacher is not None:
      with torch.no_grad():
        teacher_logits = self.teacher_fn(self.tokens)
    self.student.train()
    self.optimizer.zero_grad(set_to_none=True)
    per_token = token_losses(self.student_fn(self.tokens), self.labels, teacher_logits)
    loss = (per_token * self.mask).sum() / self.mask.sum().clamp_min(1.0)
    loss.backward()
    self.optimizer.step()
    return loss

