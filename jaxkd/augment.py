"""Batch augmentation inside the jitted step: random crop (pixel jitter) and flip."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Augment:
  """Per-example random augmentation of an NHWC batch, pure given a key.

  Attributes:
    crop_padding: pad by this many pixels (zeros), then crop back at a random offset:
      a random translation of up to +-crop_padding pixels ("jitter" in Hinton et al. 2015).
    flip: random horizontal flip with probability 1/2.
  """

  crop_padding: int = 0
  flip: bool = False

  def __post_init__(self):
    if self.crop_padding < 0:
      raise ValueError(f'crop_padding must be >= 0, got {self.crop_padding}.')

  @property
  def is_identity(self) -> bool:
    return self.crop_padding == 0 and not self.flip

  def describe(self) -> dict:
    """A JSON-able description, recorded wherever outputs depend on the input transform."""
    return dataclasses.asdict(self)

  def __call__(self, key: jax.Array, images: jax.Array, *, index_offset=0) -> jax.Array:
    """Augments `images` [B, H, W, C]; example i draws from `fold_in(key, index_offset + i)`.

    Keying by the example's position in the global batch makes the result independent of
    how the batch is split over devices (pass the shard's offset under pmap/shard_map).
    """
    if self.is_identity:
      return images
    height, width, channels = images.shape[1:]
    p = self.crop_padding

    def augment_one(example_key, image):
      crop_key, flip_key = jax.random.split(example_key)
      if p:
        padded = jnp.pad(image, ((p, p), (p, p), (0, 0)))
        dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
        image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, channels))
      if self.flip:
        image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1, :], image)
      return image

    indices = index_offset + jnp.arange(images.shape[0])
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
    return jax.vmap(augment_one)(keys, images)
