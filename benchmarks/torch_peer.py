"""The PyTorch peer of `throughput.py`: the same architectures and steps, in eager PyTorch.

Imported only with `--peer torch`. Models match jaxkd's parameter counts exactly (checked by
`throughput.py`); steps are written the way a PyTorch user would write them: NCHW tensors,
`torch.optim.SGD(momentum=0.9)`, `loss.backward()`, `torch.no_grad()` for the teacher,
`requires_grad_(False)` for a frozen backbone. With `dtype='bfloat16'` the forward passes
run under `torch.autocast(..., dtype=torch.bfloat16)` (parameters and optimizer float32), the
PyTorch counterpart of jaxkd's bfloat16 compute dtype.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TEMPERATURE = 4.0
HARD_WEIGHT = 0.5
SOFT_WEIGHT = 0.5


# --- models --------------------------------------------------------------------------------

class MLP(nn.Module):
  """Flatten -> [dropout] -> (linear -> ReLU -> [dropout]) per hidden width -> head."""

  def __init__(self, hidden, dropout=0.0, input_dropout=0.0, num_classes=10, in_features=784):
    super().__init__()
    layers = [nn.Flatten()]
    if input_dropout:
      layers.append(nn.Dropout(input_dropout))
    width = in_features
    for h in hidden:
      layers += [nn.Linear(width, h), nn.ReLU()]
      if dropout:
        layers.append(nn.Dropout(dropout))
      width = h
    self.body = nn.Sequential(*layers)
    self.head = nn.Linear(width, num_classes)

  def forward(self, x):
    return self.head(self.body(x))


class LeNet5(nn.Module):
  """conv 5x5 pad 2 -> ReLU -> maxpool -> conv 5x5 -> ReLU -> maxpool -> 120 -> 84 -> head."""

  def __init__(self, filters=(6, 16), num_classes=10):
    super().__init__()
    self.conv1 = nn.Conv2d(1, filters[0], 5, padding=2)
    self.conv2 = nn.Conv2d(filters[0], filters[1], 5)
    self.dense1 = nn.Linear(filters[1] * 5 * 5, 120)
    self.dense2 = nn.Linear(120, 84)
    self.head = nn.Linear(84, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    x = F.relu(self.dense1(x.flatten(1)))
    return self.head(F.relu(self.dense2(x)))


class BasicBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Identity()
    if stride != 1 or cin != cout:  # option B, as in jaxkd
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
  """He et al. 2016's CIFAR ResNet of depth 6n + 2 (16/32/64 filters)."""

  def __init__(self, depth, widths=(16, 16, 32, 64), num_classes=10):
    super().__init__()
    n = (depth - 2) // 6
    self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                              nn.BatchNorm2d(widths[0]), nn.ReLU())
    blocks, cin = [], widths[0]
    for width, stride in zip(widths[1:], (1, 2, 2)):
      for i in range(n):
        blocks.append(BasicBlock(cin, width, stride if i == 0 else 1))
        cin = width
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


MODELS: dict[str, Callable[[], nn.Module]] = {
    'mlp_1200': lambda: MLP((1200, 1200), dropout=0.5, input_dropout=0.2),
    'mlp_800': lambda: MLP((800, 800)),
    'lenet5': lambda: LeNet5((6, 16)),
    'lenet5_half': lambda: LeNet5((3, 8)),
    'resnet20': lambda: CifarResNet(20),
    'resnet56': lambda: CifarResNet(56),
}


def build(name: str) -> nn.Module:
  if name not in MODELS:
    raise ValueError(f'No PyTorch peer for {name!r}; known: {sorted(MODELS)}')
  return MODELS[name]()


def param_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def set_threads(num: int | None = None) -> int:
  num = num or os.cpu_count() or 1
  torch.set_num_threads(num)
  return num


# --- steps ---------------------------------------------------------------------------------

def kd_objective(student_logits, teacher_logits, labels):
  """hard_weight * CE + soft_weight * T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean."""
  hard = F.cross_entropy(student_logits, labels)
  soft = F.kl_div(F.log_softmax(student_logits / TEMPERATURE, -1),
                  F.log_softmax(teacher_logits / TEMPERATURE, -1),
                  reduction='batchmean', log_target=True) * TEMPERATURE ** 2
  return HARD_WEIGHT * hard + SOFT_WEIGHT * soft


class Peer:
  """One (pair, mode) in PyTorch: `run()` does one step on the fixed batch."""

  def __init__(self, *, teacher: str, student: str, mode: str, images_nhwc: np.ndarray,
               labels: np.ndarray, teacher_logits: np.ndarray | None, learning_rate: float,
               device: str = 'cpu', seed: int = 0, dtype: str = 'float32'):
    if dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}.")
    torch.manual_seed(seed)
    self.device = torch.device(device)
    self.dtype = dtype
    self.mode = mode
    self.images = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    self.images = self.images.to(self.device)
    self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
    self.student = build(student).to(self.device)
    self.teacher = build(teacher).to(self.device).eval() if mode in (
        'online_kd', 'teacher_forward') else None
    self.teacher_logits = None
    if teacher_logits is not None:
      self.teacher_logits = torch.from_numpy(teacher_logits).to(self.device)
    params = self.student.parameters()
    if mode == 'finetune':
      for name, p in self.student.named_parameters():
        p.requires_grad_(name.startswith('head.'))
      params = self.student.head.parameters()
    self.optimizer = torch.optim.SGD(params, lr=learning_rate, momentum=0.9)
    self.run = {
        'student': self._supervised,
        'finetune': self._supervised,
        'online_kd': self._online_kd,
        'cached_kd': self._cached_kd,
        'eval': self._eval,
        'teacher_forward': self._teacher_forward,
    }[mode]

  @property
  def param_count(self) -> int:
    model = self.teacher if self.mode == 'teacher_forward' else self.student
    return param_count(model)

  def _compute(self):
    """The forward passes' precision: bfloat16 autocast, or float32 as stored."""
    if self.dtype == 'bfloat16':
      return torch.autocast(self.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

  def sync(self):
    if self.device.type == 'cuda':
      torch.cuda.synchronize()

  def _train_step(self, loss_of):
    """One optimizer step of the student on `loss_of(student logits)`."""
    self.student.train()
    self.optimizer.zero_grad(set_to_none=True)
    with self._compute():
      loss = loss_of(self.student(self.images))
    loss.backward()
    self.optimizer.step()

  def _supervised(self):
    self._train_step(lambda logits: F.cross_entropy(logits, self.labels))

  def _online_kd(self):
    with torch.no_grad(), self._compute():
      teacher_logits = self.teacher(self.images)
    self._train_step(lambda logits: kd_objective(logits, teacher_logits, self.labels))

  def _cached_kd(self):
    self._train_step(lambda logits: kd_objective(logits, self.teacher_logits, self.labels))

  def _eval(self):
    self.student.eval()
    with torch.inference_mode(), self._compute():
      logits = self.student(self.images)
      loss_sum = F.cross_entropy(logits, self.labels, reduction='sum')
      correct = (logits.argmax(-1) == self.labels).sum()
    return loss_sum, correct

  def _teacher_forward(self):
    with torch.inference_mode(), self._compute():
      return self.teacher(self.images)
