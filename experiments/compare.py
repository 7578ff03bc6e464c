"""The compression report: a teacher and its student, side by side, as a deployer sees them.

    python experiments/compare.py --teacher workdirs/teacher --student workdirs/kd \
        [--json compare.json]

Prints a Markdown table: parameters, artifact MB (float32 / bfloat16 / int8 exports), MFLOPs
per example, CPU latency at batch 1, throughput at batch 256, and test accuracy through each
artifact (float32, bfloat16, int8 weights). --json writes every number, to rebuild tables.
"""
import json

from absl import app, flags

from jaxkd import cli

_TEACHER = flags.DEFINE_string('teacher', None, 'The teacher run (WORKDIR).')
_STUDENT = flags.DEFINE_string('student', None, 'The student run (WORKDIR).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data folder (default: $JAXKD_DATA_DIR).')
_JSON = flags.DEFINE_string('json', None, 'Also write the report as JSON here.')
_CALLS = flags.DEFINE_integer('latency_calls', 200, 'Timed batch-1 calls per model (median).')
flags.mark_flags_as_required(['teacher', 'student'])


def main(argv):
  del argv
  from jaxkd import compare, recipes
  recipes.enable_compilation_cache()  # and quiets Orbax's INFO logs
  report = cli.exit_on_user_error(
      compare.report, {'teacher': _TEACHER.value, 'student': _STUDENT.value},
      data_dir=_DATA_DIR.value, latency_calls=_CALLS.value)
  print(compare.markdown(report))
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  app.run(main)
