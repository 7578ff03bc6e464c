"""Offline text for language models: two corpora, split, tokenized and packed.

    text.prepare('pydoc', vocab_size=2048)        # once: split, train the BPE, tokenize
    batch = text.load('pydoc', 'train', seq_len=257)   # {'tokens' [N, 257], 'mask' [N, 257]}
    inputs, targets = batch['tokens'][:, :-1], batch['tokens'][:, 1:]
    weights = batch['mask'][:, :-1]   # 1.0 where the target is real text (or a separator)

Corpora (`CORPORA`), neither downloaded:

- `'pydoc'`: the Python 3.11 documentation sources, English technical prose with code (PSF
  licence), from Debian's `python3.11-doc` (`make data-text` installs it):
  `/usr/share/doc/python3.11/html/_sources/**/*.rst.txt`; `$JAXKD_PYDOC_DIR` overrides.
- `'stdlib'`: the running CPython's standard library `.py` files (`sysconfig`'s `stdlib`,
  without site-packages and test folders), for prose -> code transfer: prepare it with
  `tokenizer_corpus='pydoc'` so both share one vocabulary. It differs between Python
  versions; the recorded SHA-256 tells. `$JAXKD_STDLIB_DIR` overrides the folder.

Each file goes whole to one split, chosen by the SHA-256 of its relative path (`split_of`:
90 / 5 / 5 % train / valid / test). `prepare` writes, under `<data_dir>/<corpus>/`:

- `source.json`: the folder, the version (Debian package or Python) and, per split, every
  file's SHA-256 and the split's (`split_sha256`). `load` recomputes the split's from the
  files when they are present and refuses a change, naming the files that differ.
- `tokenizer-bpe<V>.json`: the byte-level BPE trained on the train split (`tokenizer.py`).
- `<tokenizer>/<split>.npy`: the split as one int32 token stream, `SEP doc1 SEP doc2 ... SEP`
  (files in path order), and `<tokenizer>/tokens.json` with the tokenizer's fingerprint and
  each stream's counts and SHA-256, checked by `load`.

`<tokenizer>` is `bpe<V>` (trained on this corpus), `byte`, or `<corpus>-bpe<V>` (trained on
another corpus). `pack` cuts a stream into rows; `stats` gives bytes per token for bits per
byte (`bits_per_byte`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable

import numpy as np

from jaxkd.data import tokenizer as tokenizers_
from jaxkd.data._local import CorruptDataError, DataNotFoundError, default_data_dir

FORMAT = 'jaxkd-text/1'
SPLITS = ('train', 'valid', 'test')
_CUTS = (0.90, 0.95)  # cumulative fractions of the path-hash interval: train, valid, test


class ChangedSourceError(ValueError):
  """A corpus's files differ from those a prepared dataset was made from."""


def _dpkg_version(package: str) -> str:
  try:
    out = subprocess.run(['dpkg-query', '-W', '-f=${Version}', package], capture_output=True,
                         text=True, timeout=30, check=False)
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else 'unknown'


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Where a corpus's files are and how to tell their version."""

  name: str
  pattern: str  # glob under the folder
  env_var: str
  default_dir: Callable[[], str]
  version: Callable[[], str]
  hint: str  # how to get the files
  excluded_dirs: frozenset[str] = frozenset()

  def folder(self) -> pathlib.Path:
    return pathlib.Path(os.environ.get(self.env_var) or self.default_dir()).expanduser()

  def files(self, folder: pathlib.Path) -> list[str]:
    """Relative POSIX paths of the corpus's files under `folder`, sorted."""
    found = (p.relative_to(folder) for p in folder.glob(self.pattern) if p.is_file())
    return sorted(p.as_posix() for p in found if not self.excluded_dirs & set(p.parts[:-1]))


CORPORA: dict[str, Corpus] = {
    'pydoc': Corpus(
        'pydoc', '**/*.rst.txt', 'JAXKD_PYDOC_DIR',
        lambda: '/usr/share/doc/python3.11/html/_sources',
        lambda: 'python3.11-doc ' + _dpkg_version('python3.11-doc'),
        'install Debian\'s python3.11-doc (`make data-text`, or as root: apt-get install '
        'python3.11-doc), or set JAXKD_PYDOC_DIR to a folder of the *.rst.txt sources'),
    'stdlib': Corpus(
        'stdlib', '**/*.py', 'JAXKD_STDLIB_DIR', lambda: sysconfig.get_paths()['stdlib'],
        lambda: f'{platform.python_implementation()} {platform.python_version()}',
        'run the Python the dataset was prepared with, or set JAXKD_STDLIB_DIR to its '
        'standard library folder',
        frozenset({'site-packages', 'dist-packages', 'test', 'tests', 'idle_test'})),
}


def split_of(path: str) -> str:
  """'train', 'valid' or 'test' for a file's relative path: the first 8 bytes of the path's
  SHA-256 read as a fraction of 2^64, cut at 0.90 and 0.95."""
  u = int.from_bytes(hashlib.sha256(path.encode('utf-8')).digest()[:8], 'big') / 2.0**64
  return SPLITS[sum(u >= cut for cut in _CUTS)]


def split_sha256(files: dict[str, bytes]) -> str:
  """SHA-256 over the files in path order: each path, NUL, its size (8 bytes), its bytes."""
  digest = hashlib.sha256()
  for path in sorted(files):
    digest.update(path.encode('utf-8') + b'\0' + len(files[path]).to_bytes(8, 'big'))
    digest.update(files[path])
  return digest.hexdigest()


def _corpus(name: str) -> Corpus:
  if name not in CORPORA:
    raise ValueError(f'Unknown text corpus {name!r}; known: {sorted(CORPORA)}')
  return CORPORA[name]


def read_split(name: str, split: str) -> dict[str, bytes]:
  """`{relative path: bytes}` of one split's files, read from the corpus's folder now.

  Raises:
    DataNotFoundError: the folder holds none of the corpus's files (names the fix).
  """
  corpus = _corpus(name)
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; known: {list(SPLITS)}')
  folder = corpus.folder()
  paths = corpus.files(folder) if folder.is_dir() else []
  if not paths:
    raise DataNotFoundError(f'No {corpus.pattern} files for text corpus {name!r} in {folder}. '
                            f'Fix: {corpus.hint}.')
  return {p: (folder / p).read_bytes() for p in paths if split_of(p) == split}


def _split_record(files: dict[str, bytes]) -> dict:
  return {'sha256': split_sha256(files), 'bytes': sum(map(len, files.values())),
          'files': {p: hashlib.sha256(b).hexdigest() for p, b in sorted(files.items())}}


def _changes(recorded: dict[str, str], now: dict[str, str], limit: int = 5) -> str:
  """'changed: a, b; added: c; removed: d' between two `{path: sha256}` maps."""
  groups = {'changed': [p for p in recorded if p in now and now[p] != recorded[p]],
            'added': [p for p in now if p not in recorded],
            'removed': [p for p in recorded if p not in now]}
  parts = []
  for what, paths in groups.items():
    if paths:
      more = f' and {len(paths) - limit} more' if len(paths) > limit else ''
      parts.append(f'{len(paths)} {what} ({", ".join(paths[:limit])}{more})')
  return '; '.join(parts) or 'the same files in another order'


def _write_json(path: pathlib.Path, obj: dict) -> None:
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
  os.replace(tmp, path)


def _source_record(name: str, root: pathlib.Path, overwrite: bool = False) -> dict:
  """`source.json` of a corpus, written from its files when missing (or `overwrite`)."""
  record_path = root / 'source.json'
  if record_path.exists() and not overwrite:
    return json.loads(record_path.read_text())
  if overwrite and root.exists():
    shutil.rmtree(root)
  corpus = _corpus(name)
  record = {'format': FORMAT, 'corpus': name, 'folder': str(corpus.folder().resolve()),
            'version': corpus.version(),
            'splits': {s: _split_record(read_split(name, s)) for s in SPLITS}}
  root.mkdir(parents=True, exist_ok=True)
  _write_json(record_path, record)
  return record


def _checked_split(name: str, split: str, root: pathlib.Path, record: dict,
                   required: bool = False) -> dict[str, bytes] | None:
  """The split's files now, as `record` has them; None when the corpus's folder is gone and
  not `required` (the prepared streams carry their own SHA-256).

  Raises:
    ChangedSourceError: the files differ from the record's; the message names them.
  """
  corpus = _corpus(name)
  try:
    files = read_split(name, split)
  except DataNotFoundError:
    if required:
      raise
    return None
  then = record['splits'][split]
  if split_sha256(files) == then['sha256']:
    return files
  now = _split_record(files)
  raise ChangedSourceError(
      f'The {split} split of text corpus {name!r} changed since {root} was prepared: '
      f'{_changes(then["files"], now["files"])}. Prepared from {record["folder"]} '
      f'({record["version"]}), now {corpus.folder().resolve()} ({corpus.version()}). Re-prepare '
      f'with jaxkd.data.text.prepare({name!r}, overwrite=True) (other tokenizations of it too), '
      f'or point {corpus.env_var} at the files it was prepared from.')


def _documents(files: dict[str, bytes], name: str) -> list[str]:
  try:
    return [files[p].decode('utf-8') for p in sorted(files)]
  except UnicodeDecodeError as e:
    raise CorruptDataError(f'A file of text corpus {name!r} is not UTF-8: {e}') from e


def _tokenizer_label(tokenizer: str, vocab_size: int) -> str:
  if tokenizer == 'byte':
    return 'byte'
  if tokenizer == 'bpe':
    return f'bpe{vocab_size}'
  raise ValueError(f"Unknown tokenizer {tokenizer!r}; known: ['bpe', 'byte']")


def _ensure_tokenizer(name: str, tokenizer: str, vocab_size: int, data_dir):
  """The tokenizer of corpus `name`: trained on its (checked) train split once, then read."""
  if tokenizer == 'byte':
    return tokenizers_.ByteTokenizer()
  root = default_data_dir(data_dir) / name
  record = _source_record(name, root)
  path = root / f'tokenizer-{_tokenizer_label(tokenizer, vocab_size)}.json'
  if not path.exists():
    train = _documents(_checked_split(name, 'train', root, record, required=True), name)
    trained = tokenizers_.train_bpe(train, vocab_size=vocab_size)
    path.with_suffix('.tmp').write_text(trained.to_str(), encoding='utf-8')
    os.replace(path.with_suffix('.tmp'), path)
  return tokenizers_.BPETokenizer.from_file(path)


def stream(documents: list[str], tok) -> np.ndarray:
  """int32 `SEP doc1 SEP doc2 ... SEP docN SEP`: every document token and every separator
  but the first is some position's next-token target."""
  sep = np.array([tok.sep_id], np.int32)
  pieces = [sep]
  for ids in tok.encode_batch(documents):
    pieces += [ids.astype(np.int32), sep]
  return np.concatenate(pieces)


def _array_sha256(array: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def prepare(name: str, *, vocab_size: int = 2048, tokenizer: str = 'bpe',
            tokenizer_corpus: str | None = None, data_dir=None,
            overwrite: bool = False) -> pathlib.Path:
  """Splits, (trains the tokenizer,) tokenizes corpus `name`; returns the token folder.

  When the dataset is prepared already, only checks that the corpus's files are unchanged
  (when present). Seconds for `'pydoc'` (docs/language-models.md).

  Args:
    name: a key of `CORPORA`.
    vocab_size: BPE vocabulary (ids), specials included; ignored by the byte tokenizer.
    tokenizer: `'bpe'` (trained with `tokenizers` on a train split) or `'byte'`.
    tokenizer_corpus: the corpus whose train split the BPE is trained on (default `name`):
      `prepare('stdlib', tokenizer_corpus='pydoc')` tokenizes code with the prose vocabulary.
    data_dir: default `jaxkd.data._local.default_data_dir()` ($JAXKD_DATA_DIR).
    overwrite: rebuild `<data_dir>/<name>` (all its tokenizations) from the files as they
      are now; another corpus's tokenizer is left alone.

  Raises:
    DataNotFoundError: the corpus's files are missing (the message names the fix).
    ChangedSourceError: prepared from other files and `overwrite` is off.
  """
  return _prepare(name, vocab_size, tokenizer, tokenizer_corpus, data_dir, overwrite, SPLITS)


def _prepare(name, vocab_size, tokenizer, tokenizer_corpus, data_dir, overwrite, checked):
  """`prepare`, checking only the `checked` splits' files of a prepared dataset."""
  root = default_data_dir(data_dir) / name
  record = _source_record(name, root, overwrite)
  tok_corpus = tokenizer_corpus or name
  label = _tokenizer_label(tokenizer, vocab_size)
  out = root / (label if tok_corpus == name or tokenizer == 'byte' else f'{tok_corpus}-{label}')
  if (out / 'tokens.json').exists():
    for split in checked:
      _checked_split(name, split, root, record)
    return out
  tok = _ensure_tokenizer(tok_corpus, tokenizer, vocab_size, data_dir)
  meta = {'format': FORMAT, 'tokenizer': label, 'tokenizer_corpus': tok_corpus,
          'tokenizer_sha256': tok.fingerprint, 'vocab_size': tok.vocab_size,
          'sep_id': tok.sep_id, 'pad_id': tok.pad_id, 'splits': {}}
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{label}-', dir=root))
  tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared data folder from other users
  try:
    for split in SPLITS:
      files = _checked_split(name, split, root, record, required=True)
      tokens = stream(_documents(files, name), tok)
      np.save(tmp / f'{split}.npy', tokens)
      meta['splits'][split] = {'source_sha256': record['splits'][split]['sha256'],
                               'docs': len(files), 'bytes': record['splits'][split]['bytes'],
                               'tokens': len(tokens), 'sha256': _array_sha256(tokens)}
    _write_json(tmp / 'tokens.json', meta)
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def _open(name, split, vocab_size, tokenizer, tokenizer_corpus, data_dir):
  """(tokens.json, the split's stream), prepared when missing; files, tokenizer and stream
  checked against their records."""
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; known: {list(SPLITS)}')
  out = _prepare(name, vocab_size, tokenizer, tokenizer_corpus, data_dir, False, (split,))
  meta = json.loads((out / 'tokens.json').read_text())
  tok = _ensure_tokenizer(meta['tokenizer_corpus'], tokenizer, vocab_size, data_dir)
  if tok.fingerprint != meta['tokenizer_sha256']:
    raise ChangedSourceError(f'{out} was tokenized with tokenizer {meta["tokenizer_sha256"]}, '
                             f'but {meta["tokenizer_corpus"]}\'s is now {tok.fingerprint}; '
                             f'remove {out} to tokenize again.')
  record = json.loads((out.parent / 'source.json').read_text())
  info = meta['splits'][split]
  if info['source_sha256'] != record['splits'][split]['sha256']:
    raise ChangedSourceError(f'{out} was tokenized from another {split} split than '
                             f'{out.parent}/source.json records; remove {out} to tokenize again.')
  tokens = np.load(out / f'{split}.npy')
  if _array_sha256(tokens) != info['sha256']:
    raise CorruptDataError(f'{out / (split + ".npy")} does not match its SHA-256 in '
                           f'tokens.json; remove {out} to tokenize again.')
  return meta, tokens


def pack(tokens: np.ndarray, seq_len: int, *, pad_id: int) -> dict[str, np.ndarray]:
  """Cuts a token stream into rows that overlap by one token, so each of the stream's
  `n - 1` next-token transitions is in exactly one row.

  Row `i` is `stream[i * (seq_len - 1): i * (seq_len - 1) + seq_len]`, the last one filled
  with `pad_id`. `mask[i, j]` is 1.0 when `tokens[i, j + 1]` is a real token (the target of
  position `j`), else 0.0; the last column is 0.0. So a model reads
  `tokens[:, :-1]`, predicts `tokens[:, 1:]`, weighted by `mask[:, :-1]`.

  Returns:
    `{'tokens': int32 [N, seq_len], 'mask': float32 [N, seq_len]}`, `N = ceil((n - 1) /
    (seq_len - 1))` (at least 1).
  """
  if seq_len < 2:
    raise ValueError(f'seq_len={seq_len}: a row needs an input and a target (>= 2).')
  tokens = np.asarray(tokens, np.int32)
  step = seq_len - 1
  rows = max(1, math.ceil((len(tokens) - 1) / step))
  padded = np.full(rows * step + 1, pad_id, np.int32)
  padded[:len(tokens)] = tokens
  index = np.arange(rows)[:, None] * step + np.arange(seq_len)
  mask = np.zeros((rows, seq_len), np.float32)
  mask[:, :-1] = index[:, 1:] < len(tokens)
  return {'tokens': padded[index], 'mask': mask}


def load(name: str, split: str, *, seq_len: int, vocab_size: int = 2048,
         tokenizer: str = 'bpe', tokenizer_corpus: str | None = None,
         data_dir=None) -> dict[str, np.ndarray]:
  """`pack`ed rows of one split (prepared first when missing; see `prepare` for the args).

  Raises:
    ChangedSourceError: the split's files, the tokenizer or the stream changed since
      `prepare`; the message names what changed.
  """
  meta, tokens = _open(name, split, vocab_size, tokenizer, tokenizer_corpus, data_dir)
  return pack(tokens, seq_len, pad_id=meta['pad_id'])


def stats(name: str, split: str, *, vocab_size: int = 2048, tokenizer: str = 'bpe',
          tokenizer_corpus: str | None = None, data_dir=None) -> dict:
  """`{'docs', 'bytes', 'targets', 'bytes_per_token', 'vocab_size', 'sha256'}` of a prepared
  split; `targets` (tokens predicted: documents' tokens and one separator each) is what
  `load`'s mask sums to, `bytes_per_token = bytes / targets`; `sha256` is the token stream's."""
  meta, tokens = _open(name, split, vocab_size, tokenizer, tokenizer_corpus, data_dir)
  info = meta['splits'][split]
  targets = len(tokens) - 1
  return {'docs': info['docs'], 'bytes': info['bytes'], 'targets': targets,
          'bytes_per_token': info['bytes'] / targets, 'vocab_size': meta['vocab_size'],
          'sha256': info['sha256']}


def load_tokenizer(name: str, *, vocab_size: int = 2048, tokenizer: str = 'bpe', data_dir=None):
  """The tokenizer trained on corpus `name`'s train split (trained when missing)."""
  return _ensure_tokenizer(name, tokenizer, vocab_size, data_dir)


def bits_per_byte(nats_per_token: float, bytes_per_token: float) -> float:
  """Mean next-token loss (nats per masked target) as bits per byte of the split's text."""
  return nats_per_token / math.log(2) / bytes_per_token
