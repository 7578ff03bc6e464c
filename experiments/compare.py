"""The compression report: a teacher and its student, side by side, as a deployer sees them.

    python experiments/compare.py --teacher workdirs/teacher --student workdirs/kd \
        [--json compare.json]
    python experiments/compare.py --models lenet5,lenet5_half,mlp_1200,mlp_800   # costs only

Prints a Markdown table: parameters, artifact MB (float32 / bfloat16 / int8 exports), MFLOPs
per example, CPU latency at batch 1, throughput at batch 256, and test accuracy through each
artifact (float32, bfloat16, int8 weights). --json writes every number, to rebuild tables.
With --models instead: each zoo model's deployment cost (parameters, artifact kB, MFLOPs,
latency, throughput) on random weights, the columns a results table adds beside accuracies.
"""
import json

from absl import app, flags

from jaxkd import cli

_TEACHER = flags.DEFINE_string('teacher', None, 'The teacher run (WORKDIR).')
_STUDENT = flags.DEFINE_string('student', None, 'The student run (WORKDIR).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data folder (default: $JAXKD_DATA_DIR).')
_JSON = flags.DEFINE_string('json', None, 'Also write the report as JSON here.')
_CALLS = flags.DEFINE_integer('latency_calls', 200, 'Timed batch-1 calls per model (median).')
_MODELS = flags.DEFINE_list('models', None, 'Zoo models to cost on random weights instead.')
_DATASET = flags.DEFINE_string('dataset', 'fashion_mnist', 'Input shapes for --models.')


def main(argv):
  del argv
  from jaxkd import recipes
  from jaxkd.tables import compare
  recipes.enable_compilation_cache()  # and quiets Orbax's INFO logs
  if _MODELS.value:
    costs = cli.exit_on_user_error(compare.model_costs, _MODELS.value, dataset=_DATASET.value,
                                   latency_calls=_CALLS.value)
    print(compare.costs_markdown(costs))
    if _JSON.value:
      with open(_JSON.value, 'w') as f:
        json.dump(costs, f, indent=2)
    return
  if not (_TEACHER.value and _STUDENT.value):
    cli.exit_on_user_error(_refuse)
  report = cli.exit_on_user_error(
      compare.report, {'teacher': _TEACHER.value, 'student': _STUDENT.value},
      data_dir=_DATA_DIR.value, latency_calls=_CALLS.value)
  print(compare.markdown(report))
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(report, f, indent=2)


def _refuse():
  raise ValueError('give --teacher and --student (two finished runs), or --models.')


if __name__ == '__main__':
  app.run(main)
