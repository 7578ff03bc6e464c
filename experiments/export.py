"""Exports a finished run's model as a deployable artifact (jax.export, StableHLO).

    python experiments/export.py --workdir workdirs/kd --out exports/kd
    python experiments/export.py --workdir workdirs/kd --out exports/kd_int8 --int8
    python experiments/export.py --workdir workdirs/dml/members/0 --out exports/dml0 \
        --dtype bfloat16

Writes OUT/model.jaxexport (the bytes of `Exported.serialize()`) and OUT/model.json; the
artifact takes uint8 images [batch, H, W, C] and returns float32 logits (a language model's
run: int32 tokens [batch, seq_len] -> logits [batch, seq_len, vocab]). Load it with JAX
alone: `jaxkd.serving.load(OUT)`, or `jax.export.deserialize(bytes).call(images)`.
"""
from absl import app, flags

from jaxkd import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished run (its WORKDIR or WORKDIR/final).')
_OUT = flags.DEFINE_string('out', None, 'New (or empty) folder for the artifact.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Weights and arithmetic of the artifact.')
_INT8 = flags.DEFINE_bool('int8', False, 'Store every kernel as per-channel int8 weights.')
_INT8_LAYERS = flags.DEFINE_list(
    'int8_layers', [], 'Store only these kernels as int8: regexes over variables paths, '
    'e.g. params/head/kernel (implies --int8).')
_PLATFORMS = flags.DEFINE_list('platforms', [], 'e.g. cpu,cuda (default: this backend).')
flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  del argv
  from jaxkd import export, recipes
  recipes.enable_compilation_cache()  # and quiets Orbax's INFO logs
  int8 = list(_INT8_LAYERS.value) or _INT8.value
  description = cli.exit_on_user_error(
      export.export_run, _WORKDIR.value, _OUT.value, dtype=_DTYPE.value, int8=int8,
      platforms=_PLATFORMS.value or None)
  quantized = len((description['int8'] or {}).get('quantized', []))
  print(f"wrote {_OUT.value}: {description['model']} ({description['parameters']:,} "
        f"parameters, {description['dtype']}, {quantized} int8 kernel(s)), "
        f"{description['artifact_bytes']:,} bytes, input {description['input_dtype']} "
        f"{['batch', *description['input_shape']]}")


if __name__ == '__main__':
  app.run(main)
