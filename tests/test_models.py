"""Tests for the model zoo: registry, shapes, exact sizes, modes, dtypes and features."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import models, paths

MNIST = (2, 28, 28, 1)
CIFAR = (2, 32, 32, 3)
NO_BN_MODELS = {'mlp', 'mlp_1200', 'mlp_800', 'lenet5', 'lenet5_mid', 'lenet5_half'}
REQUIRED = [
    'mlp', 'mlp_1200', 'mlp_800', 'lenet5', 'lenet5_mid', 'lenet5_half',
    'resnet8', 'resnet14', 'resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110',
    'resnet8x4', 'resnet32x4', 'wrn', 'wrn_16_1', 'wrn_16_2', 'wrn_40_1', 'wrn_40_2', 'wrn_28_10',
]


def _init(model, shape):
  images = jnp.zeros(shape, jnp.float32)
  return model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, images,
                    train=False)


@functools.cache
def _abstract(name, shape, num_classes=10):
  """Shapes of (variables, eval-mode logits), traced once, computing nothing."""
  model = models.build(name, num_classes=num_classes)

  def init_with_output(images):
    keys = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
    return model.init_with_output(keys, images, train=False)

  logits, variables = jax.eval_shape(init_with_output, jax.ShapeDtypeStruct(shape, jnp.float32))
  return variables, logits


def _variables(name, shape, **overrides):
  """Random variables of the right shapes, without compiling `init` (slow on XLA:CPU).

  Kernels ~ N(0, 2/fan_in), biases ~ N(0, 0.1^2), BN scale 1, running mean 0, var 1.
  """
  model = models.build(name, num_classes=10, **overrides)
  abstract = jax.eval_shape(lambda x: _init(model, x.shape),
                            jax.ShapeDtypeStruct(shape, jnp.float32))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    kind = path[-1].key
    if kind == 'kernel':
      fan_in = np.prod(leaf.shape[:-1])
      return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), jnp.float32)
    if kind in ('scale', 'var'):
      return jnp.ones(leaf.shape, jnp.float32)
    if kind == 'mean':
      return jnp.zeros(leaf.shape, jnp.float32)
    return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)

  return model, jax.tree.map_with_path(fill, abstract)


def _jit_apply(model, **kwargs):
  """`model.apply` with static `kwargs` (train, mutable), jitted: eager CNNs are slow on CPU."""
  return jax.jit(functools.partial(model.apply, **kwargs))


def _images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# ---------------------------------------------------------------- registry

def test_names_are_the_sorted_registry_and_include_the_required_models():
  assert models.names() == sorted(models.MODELS)
  assert set(REQUIRED) <= set(models.names())


def test_unknown_name_lists_the_known_names_sorted():
  with pytest.raises(ValueError) as err:
    models.build('resnet21', num_classes=10)
  assert str(sorted(models.MODELS)) in str(err.value)
  assert 'resnet21' in str(err.value)


def test_unknown_override_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"Unknown override.*'depth'.*'widths'"):
    models.build('resnet20', num_classes=10, wdith=2)


@pytest.mark.parametrize('name,overrides', [
    ('resnet', dict(depth=21)), ('wrn', dict(depth=18)), ('lenet5', dict(pool='median'))])
def test_invalid_architecture_raises(name, overrides):
  model = models.build(name, num_classes=10, **overrides)
  with pytest.raises(ValueError, match='depth|pool'):
    jax.eval_shape(lambda x: _init(model, x.shape), jax.ShapeDtypeStruct(MNIST, jnp.float32))


def test_param_count_of_arrays_and_shapes():
  tree = {'a': jnp.zeros((3, 4)), 'b': {'c': jax.ShapeDtypeStruct((5,), jnp.float32)}}
  assert models.param_count(tree) == 17


# ---------------------------------------------------------------- every model

@pytest.mark.parametrize('shape', [MNIST, CIFAR], ids=['28x28x1', '32x32x3'])
@pytest.mark.parametrize('name', sorted(set(models.MODELS) - set(models.LANGUAGE_MODELS)))
def test_every_model_shapes_collections_and_head(name, shape):
  variables, logits = _abstract(name, shape)
  assert logits.shape == (2, 10)
  assert logits.dtype == jnp.float32
  expected = {'params'} if name in NO_BN_MODELS else {'params', 'batch_stats'}
  assert set(variables) == expected
  assert set(variables['params']['head']) == {'kernel', 'bias'}
  assert variables['params']['head']['kernel'].shape[-1] == 10
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


def test_num_classes_sets_the_head_width():
  variables, logits = _abstract('resnet8', CIFAR, num_classes=100)
  assert logits.shape == (2, 100)
  assert variables['params']['head']['kernel'].shape == (64, 100)


# Hand counts (weights + biases; BN scale + bias are params, running stats are not).
# MLP 784 = 28*28*1 inputs, 3072 = 32*32*3:
#   mlp_1200: 784*1200+1200 + 1200*1200+1200 + 1200*10+10 = 942000+1441200+12010 = 2395210
#             3072*1200+1200 = 3687600 -> 3687600+1441200+12010 = 5140810
#   mlp_800:  784*800+800 + 800*800+800 + 800*10+10 = 628000+640800+8010 = 1276810
#             3072*800+800 = 2458400 -> 2458400+640800+8010 = 3107210
# LeNet-5 (28x28: conv SAME 28 -> pool 14 -> conv VALID 10 -> pool 5; 32x32: 32,16,12,6):
#   lenet5 1ch:  conv1 25*1*6+6=156, conv2 25*6*16+16=2416, dense1 (5*5*16=400)*120+120=48120,
#                dense2 120*84+84=10164, head 84*10+10=850 -> 61706
#   lenet5 3ch:  conv1 25*3*6+6=456, conv2 2416, dense1 (6*6*16=576)*120+120=69240 -> 83126
#   lenet5_half 1ch: conv1 25*3+3=78, conv2 25*3*8+8=608, dense1 (5*5*8=200)*120+120=24120,
#                10164, 850 -> 35820
#   lenet5_half 3ch: conv1 25*3*3+3=228, 608, dense1 (6*6*8=288)*120+120=34680 -> 46530
# resnet20 (n=3, 3x3 convs without bias, BN = 2*C params):
#   stem 9*3*16=432 + 32 = 464 (1 channel: 9*1*16=144 + 32 = 176)
#   stage1: 3 blocks * (2*9*16*16 + 2*32) = 3*4672 = 14016
#   stage2: block0 9*16*32+64 + 9*32*32+64 + 1x1 16*32+64 = 4672+9280+576 = 14528,
#           2 blocks * (2*9216+128) = 37120 -> 51648
#   stage3: block0 9*32*64+128 + 9*64*64+128 + 32*64+128 = 18560+36992+2176 = 57728,
#           2 blocks * (2*36864+256) = 147968 -> 205696
#   head 64*10+10 = 650 -> 464+14016+51648+205696+650 = 272474 (He et al.'s 0.27M);
#   on 1 channel 272474 - 288 = 272186.
# wrn_16_2 (n=2, widths 32/64/128, pre-activation, 1x1 shortcut without BN):
#   stem 9*3*16 = 432
#   stage1: block0 bn 32 + 9*16*32 + bn 64 + 9*32*32 + 16*32 = 32+4608+64+9216+512 = 14432,
#           block1 64+9216+64+9216 = 18560 -> 32992
#   stage2: block0 64+9*32*64+128+9*64*64+32*64 = 64+18432+128+36864+2048 = 57536,
#           block1 128+36864+128+36864 = 73984 -> 131520
#   stage3: block0 128+9*64*128+256+9*128*128+64*128 = 128+73728+256+147456+8192 = 229760,
#           block1 256+147456+256+147456 = 295424 -> 525184
#   final bn 256, head 128*10+10 = 1290 -> 432+32992+131520+525184+256+1290 = 691674
#   (with 100 classes 128*100+100 = 12900 -> 703284, RepDistiller's ~0.70M).
# convnet_bn (28x28x1; 3x3 SAME convs without bias, BN = 2*C, 2x2 pools 28 -> 14 -> 7 -> 3):
#   block1 9*1*32 + 64 = 352, block2 9*32*64 + 128 = 18560, block3 9*64*128 + 256 = 73984,
#   dense1 (3*3*128 = 1152)*256 + 256 = 295168, head 256*10 + 10 = 2570 -> 390634
PARAM_COUNTS = {
    ('mlp_1200', MNIST): 2_395_210,
    ('mlp_1200', CIFAR): 5_140_810,
    ('mlp_800', MNIST): 1_276_810,
    ('mlp_800', CIFAR): 3_107_210,
    ('lenet5', MNIST): 61_706,
    ('lenet5', CIFAR): 83_126,
    ('lenet5_half', MNIST): 35_820,
    ('lenet5_half', CIFAR): 46_530,
    ('resnet20', CIFAR): 272_474,
    ('resnet20', MNIST): 272_186,
    ('wrn_16_2', CIFAR): 691_674,
    ('convnet_bn', MNIST): 390_634,
}


@pytest.mark.parametrize('name,shape', list(PARAM_COUNTS))
def test_exact_param_counts(name, shape):
  variables, _ = _abstract(name, shape)
  assert models.param_count(variables['params']) == PARAM_COUNTS[(name, shape)]


def test_wrn_param_counts_match_repdistiller_on_cifar100():
  # RepDistiller reports ~2.26M for wrn_40_2 and ~0.70M for wrn_16_2 (100 classes).
  # wrn_40_2 by hand (n=6, as above): stem 432; stage1 14432 + 5*18560 = 107232;
  # stage2 57536 + 5*73984 = 427456; stage3 229760 + 5*295424 = 1706880; bn 256;
  # head 12900 -> 2255156.
  counts = {n: models.param_count(_abstract(n, CIFAR, num_classes=100)[0]['params'])
            for n in ('wrn_40_2', 'wrn_16_2')}
  assert counts == {'wrn_40_2': 2_255_156, 'wrn_16_2': 703_284}


def test_resnet_x4_and_deeper_resnets_have_the_right_structure():
  params = _abstract('resnet8x4', CIFAR)[0]['params']
  assert params['stem']['conv']['kernel'].shape == (3, 3, 3, 32)
  assert params['stage1']['block0']['shortcut_conv']['kernel'].shape == (1, 1, 32, 64)
  assert params['head']['kernel'].shape == (256, 10)
  params = _abstract('resnet56', CIFAR)[0]['params']
  assert set(params['stage3']) == {f'block{i}' for i in range(9)}
  assert 'shortcut_conv' not in params['stage1']['block0']


def test_real_init_gives_finite_logits():
  model = models.build('lenet5', num_classes=10)
  variables = jax.jit(lambda k: model.init({'params': k}, jnp.zeros(MNIST), train=False))(
      jax.random.key(0))
  logits = _jit_apply(model, train=False)(variables, _images(MNIST))
  assert np.all(np.isfinite(logits)) and np.std(logits) > 0


# ---------------------------------------------------------------- modes

@pytest.mark.parametrize('name', ['lenet5', 'mlp_1200', 'resnet8', 'wrn_16_1'])
def test_eval_mode_is_deterministic_and_ignores_dropout_rng(name):
  model, variables = _variables(name, MNIST)
  images = _images(MNIST)
  apply = _jit_apply(model, train=False)
  a = apply(variables, images, rngs={'dropout': jax.random.key(1)})
  b = apply(variables, images, rngs={'dropout': jax.random.key(2)})
  np.testing.assert_array_equal(a, b)
  assert np.all(np.isfinite(a)) and np.std(a) > 0


@pytest.mark.parametrize('name,overrides', [('mlp_1200', {}), ('wrn_16_1', {'dropout_rate': 0.3})])
def test_dropout_is_active_only_in_train_mode(name, overrides):
  model, variables = _variables(name, MNIST, **overrides)
  images = _images(MNIST)
  train_apply = _jit_apply(model, train=True, mutable=['batch_stats'])

  def train_logits(seed):
    return train_apply(variables, images, rngs={'dropout': jax.random.key(seed)})[0]

  same_a, same_b, other = train_logits(1), train_logits(1), train_logits(2)
  np.testing.assert_array_equal(same_a, same_b)
  assert not np.allclose(same_a, other, atol=1e-4)
  eval_logits = _jit_apply(model, train=False)(variables, images)
  assert not np.allclose(same_a, eval_logits, atol=1e-4)


def test_train_mode_updates_batch_stats_and_eval_uses_them():
  model, variables = _variables('resnet8', MNIST)
  images = 3.0 + _images(MNIST)
  _, updates = _jit_apply(model, train=True, mutable=['batch_stats'])(variables, images)
  # Running mean starts at 0 and moves by PyTorch's momentum 0.1 towards the batch mean.
  _, feats = jax.jit(lambda v, x: models.features(model, v, x, 'stem/conv'))(variables, images)
  batch_mean = np.asarray(feats['stem/conv']).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(updates['batch_stats']['stem']['bn']['mean'], 0.1 * batch_mean,
                             rtol=1e-4, atol=1e-6)
  assert np.abs(batch_mean).max() > 0.1
  eval_apply = _jit_apply(model, train=False)
  before = eval_apply(variables, images)
  after = eval_apply({**variables, **updates}, images)
  assert not np.allclose(before, after, atol=1e-5)


def test_lenet_pool_is_selectable():
  images = _images(MNIST)
  max_model, variables = _variables('lenet5', MNIST)
  avg_model = models.build('lenet5', num_classes=10, pool='avg')
  max_logits = _jit_apply(max_model, train=False)(variables, images)
  avg_logits = _jit_apply(avg_model, train=False)(variables, images)
  assert not np.allclose(max_logits, avg_logits)


@pytest.mark.parametrize('name', ['lenet5', 'mlp_800', 'resnet8', 'wrn_16_1'])
def test_bfloat16_compute_gives_float32_logits_close_to_float32(name):
  images = _images(CIFAR)
  model, variables = _variables(name, CIFAR)
  bf16_model = models.build(name, num_classes=10, dtype=jnp.bfloat16)
  bf16_variables = jax.eval_shape(lambda x: _init(bf16_model, x.shape),
                                  jax.ShapeDtypeStruct(CIFAR, jnp.float32))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_variables))
  expected = _jit_apply(model, train=False)(variables, images)
  got = _jit_apply(bf16_model, train=False)(variables, images)
  assert got.dtype == jnp.float32
  scale = float(np.abs(expected).max())
  np.testing.assert_allclose(got, expected, atol=0.05 * max(scale, 1.0))
  assert not np.array_equal(got, expected)  # It really ran in bfloat16.


# ---------------------------------------------------------------- features

def test_feature_paths_are_module_paths_parents_first():
  paths = models.feature_paths(models.build('resnet8', num_classes=10), CIFAR)
  assert paths[:3] == ['stem', 'stem/conv', 'stem/bn']
  assert paths[-2:] == ['pool', 'head']
  assert 'stage2/block0/shortcut_conv' in paths
  assert 'stage1/block0/shortcut_conv' not in paths
  assert models.feature_paths(models.build('lenet5', num_classes=10), MNIST) == [
      'conv1', 'pool1', 'conv2', 'pool2', 'dense1', 'dense2', 'head']


@pytest.mark.parametrize('shape,spatial', [(CIFAR, (32, 16, 8)), (MNIST, (28, 14, 7))])
def test_features_shapes_and_logits_match_apply(shape, spatial):
  model, variables = _variables('resnet8', shape)
  images = _images(shape)
  paths = ['stem', 'stage2', 'stage3/block0', 'pool']
  logits, feats = jax.jit(lambda v, x: models.features(model, v, x, paths))(variables, images)
  s1, s2, s3 = spatial
  assert {k: v.shape for k, v in feats.items()} == {
      'stem': (2, s1, s1, 16), 'stage2': (2, s2, s2, 32), 'stage3/block0': (2, s3, s3, 64),
      'pool': (2, 64)}
  expected = _jit_apply(model, train=False)(variables, images)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(feats['pool'], feats['stage3/block0'].mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)


def test_features_regex_and_train_mode_updates():
  model, variables = _variables('wrn_16_1', MNIST)
  images = _images(MNIST)
  logits, feats = jax.jit(lambda v, x: models.features(model, v, x, r'stage\d'))(variables, images)
  assert sorted(feats) == ['stage1', 'stage2', 'stage3']
  expected = _jit_apply(model, train=False)(variables, images)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)

  @jax.jit
  def train_features(v, x):
    with_updates = models.features(model, v, x, 'final_bn', train=True, mutable=['batch_stats'])
    # Without `mutable`, train mode still runs and returns (logits, feats) only.
    without_updates = models.features(model, v, x, 'pool', train=True)
    return with_updates, without_updates

  ((logits, feats), updates), (logits_only, _) = train_features(variables, images)
  expected_logits, expected_updates = _jit_apply(model, train=True, mutable=['batch_stats'])(
      variables, images)
  np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits_only, expected_logits, rtol=1e-5, atol=1e-6)
  assert feats['final_bn'].shape == (2, 7, 7, 64)
  assert set(updates) == {'batch_stats'}
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               updates, expected_updates)


def test_features_of_mlp_with_dropout_rng():
  model, variables = _variables('mlp_1200', MNIST)
  images = _images(MNIST)
  rngs = {'dropout': jax.random.key(3)}
  logits, feats = jax.jit(lambda v, x, r: models.features(
      model, v, x, ['dense1', 'dropout1'], train=True, rngs=r))(variables, images, rngs)
  expected = _jit_apply(model, train=True)(variables, images, rngs=rngs)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  assert feats['dense1'].shape == feats['dropout1'].shape == (2, 1200)
  assert np.any(feats['dropout1'] == 0) and np.any(feats['dense1'] < 0)


def test_features_unknown_path_lists_the_available_ones():
  model, variables = _variables('resnet8', MNIST)
  with pytest.raises(ValueError, match=r"\['stage4'\].*'stage3/block0'"):
    jax.eval_shape(lambda v, x: models.features(model, v, x, ['stage1', 'stage4']),
                   variables, _images(MNIST))


@pytest.mark.parametrize('name', ['resnet8', 'wrn_16_1'])
def test_stage_preact_taps_change_no_parameter_name(name):
  """`stage{i}/preact` reads the sum before a stage's last ReLU (OFD's feature): the stage's
  output is its ReLU (ResNet) or itself (pre-activation WRN); the tap owns no variable."""
  model = models.build(name, num_classes=10)
  shape = (2, 16, 16, 3)
  assert {f'stage{i}/preact' for i in (1, 2, 3)} <= set(models.feature_paths(model, shape))
  variables = model.init(jax.random.key(0), jnp.zeros(shape), train=False)
  assert not [p for p in paths.flatten(variables) if 'preact' in p]
  images = jax.random.normal(jax.random.key(1), shape)
  _, feats = models.features(model, variables, images, ['stage2/preact', 'stage2'])
  expected = feats['stage2/preact'] if name.startswith('wrn') else jax.nn.relu(
      feats['stage2/preact'])
  np.testing.assert_array_equal(feats['stage2'], expected)
  assert float(jnp.min(feats['stage2/preact'])) < 0
