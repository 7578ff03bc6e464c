"""Supervised training on Fashion-MNIST.

    python experiments/train.py --config experiments/configs/fashion_mnist.py:lenet5 \
        --workdir workdirs/lenet5 [--config.num_epochs=20 ...]

The part after ':' names the model (default lenet5): lenet5, lenet5_half, mlp_1200, mlp_800.
"""
import ml_collections


def get_config(model: str = 'lenet5') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = 'fashion_mnist'
  config.data_dir = ''  # '' = $JAXKD_DATA_DIR or ~/tensorflow_datasets
  config.validation_size = 0  # > 0: hold out this many training images for model selection
  config.validation_first = False  # True: held out before the class subset is drawn
  config.classes = ()  # a subset of classes, relabelled 0..k-1 (transfer tasks)
  config.train_per_class = 0  # 0 = all training images of each class
  config.model = model or 'lenet5'
  config.model_overrides = ml_collections.ConfigDict()
  config.dtype = 'float32'  # or 'bfloat16' compute (float32 parameters and losses)
  config.seed = 0
  config.batch_size = 64
  config.num_epochs = 1
  config.num_steps = 0  # > 0 overrides num_epochs
  config.optimizer = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=2e-3, momentum=0.9, weight_decay=0.0, schedule='cosine',
      warmup_steps=0))
  config.label_smoothing = 0.0
  config.augment = ml_collections.ConfigDict(dict(crop_padding=0, flip=False))
  config.parallel = ml_collections.ConfigDict(dict(mode='jit', num_devices=0,
                                                   shard_teacher=False))
  config.log_every = 100
  config.eval_batch_size = 1000
  config.eval_every = 1  # epochs between evaluations (the last epoch is always evaluated)
  # Checkpoints in WORKDIR/checkpoints; a rerun of the same command resumes from the newest.
  config.checkpoint_every = 500  # steps; 0 = no checkpoints (and no resume)
  config.keep_last = 2  # newest checkpoints kept
  config.keep_best = 0  # best checkpoints kept besides, ranked at each epoch's evaluation
  config.best_metric = 'val_accuracy'  # needs validation_size > 0; never a test metric...
  config.allow_test_selection = False  # ...unless this says so (and the run records it)
  config.best_mode = 'max'
  return config
