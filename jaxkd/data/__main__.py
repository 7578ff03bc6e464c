"""`python -m jaxkd.data prepare NAME [NAME ...]`: build datasets (idempotent)."""
import argparse
import sys
import time

from jaxkd import data


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxkd.data')
  parser.add_argument('command', choices=['prepare'])
  parser.add_argument('names', nargs='+', choices=sorted(data.DATASETS))
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args(argv)
  for name in args.names:
    start = time.perf_counter()
    try:
      data.prepare(name, data_dir=args.data_dir)
    except (data.DataNotFoundError, data.CorruptDataError, ValueError) as error:
      print(error, file=sys.stderr)
      return 1
    print(f'{name}: ready ({time.perf_counter() - start:.1f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
