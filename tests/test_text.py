"""jaxkd.data.text and jaxkd.data.tokenizer: splits, checksums, tokenizers, packing."""
import hashlib
import json
import pathlib

import numpy as np
import pytest

from jaxkd.data import DataNotFoundError, CorruptDataError
from jaxkd.data import text
from jaxkd.data import tokenizer as tokenizers_

WORDS = ('the function returns a list of values when called with an argument; '
         'see also class method module object string bytes format print import').split()
PYDOC = pathlib.Path('/usr/share/doc/python3.11/html/_sources')


def _names(counts: dict[str, int], suffix: str) -> dict[str, list[str]]:
  """The first file names (in a fixed order) that fall into each split, `counts` of each."""
  found = {s: [] for s in counts}
  for i in range(10_000):
    name = f'part{i % 3}/doc{i:04d}{suffix}'
    split = text.split_of(name)
    if len(found[split]) < counts[split]:
      found[split].append(name)
    if all(len(found[s]) == counts[s] for s in counts):
      return found
  raise AssertionError('not enough names')


def _write_corpus(folder: pathlib.Path, suffix: str = '.rst.txt', seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  names = _names({'train': 12, 'valid': 2, 'test': 2}, suffix)
  for split_names in names.values():
    for name in split_names:
      words = rng.choice(WORDS, size=int(rng.integers(20, 200)))
      path = folder / name
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(' '.join(words) + '\nÜnïcode ✓ line\n', encoding='utf-8')
  return names


@pytest.fixture
def corpus(tmp_path, monkeypatch):
  source = tmp_path / 'source'
  names = _write_corpus(source)
  monkeypatch.setenv('JAXKD_PYDOC_DIR', str(source))
  monkeypatch.setenv('JAXKD_DATA_DIR', str(tmp_path / 'data'))
  return source, names


def test_split_is_a_fixed_function_of_the_path_with_90_5_5_proportions():
  # Pinned: the first 8 bytes of sha256('a') are ca978112ca1bbdca -> 0.791 -> train.
  assert text.split_of('a') == 'train'
  paths = [f'folder{i % 7}/file{i}.rst.txt' for i in range(20_000)]
  splits = [text.split_of(p) for p in paths]
  assert splits == [text.split_of(p) for p in paths]
  for split, fraction in zip(text.SPLITS, (0.90, 0.05, 0.05)):
    assert abs(splits.count(split) / len(paths) - fraction) < 0.01
  # The rule itself, recomputed here.
  for p in paths[:200]:
    u = int(hashlib.sha256(p.encode()).hexdigest()[:16], 16) / 2**64
    assert text.split_of(p) == ('train' if u < 0.9 else 'valid' if u < 0.95 else 'test')


def test_split_sha256_covers_paths_sizes_and_bytes():
  base = text.split_sha256({'a': b'xy', 'b': b'z'})
  assert base == text.split_sha256({'b': b'z', 'a': b'xy'})  # path order, not dict order
  assert base != text.split_sha256({'a': b'x', 'b': b'yz'})  # same bytes, other files
  assert base != text.split_sha256({'a': b'xy', 'c': b'z'})
  digest = hashlib.sha256()
  for path, data in (('a', b'xy'), ('b', b'z')):
    digest.update(path.encode() + b'\0' + len(data).to_bytes(8, 'big') + data)
  assert base == digest.hexdigest()


def test_prepare_records_files_and_load_packs_every_target(corpus):
  source, names = corpus
  out = text.prepare('pydoc', vocab_size=300)
  record = json.loads((out.parent / 'source.json').read_text())
  assert record['folder'] == str(source.resolve())
  assert record['version'].startswith('python3.11-doc')
  for split in text.SPLITS:
    assert sorted(record['splits'][split]['files']) == sorted(names[split])
    files = {n: (source / n).read_bytes() for n in names[split]}
    assert record['splits'][split]['sha256'] == text.split_sha256(files)
    batch = text.load('pydoc', split, seq_len=33, vocab_size=300)
    tokens, mask = batch['tokens'], batch['mask']
    assert tokens.dtype == np.int32 and mask.dtype == np.float32 and tokens.shape[1] == 33
    stats = text.stats('pydoc', split, vocab_size=300)
    assert stats['targets'] == mask.sum() and stats['docs'] == len(names[split])
    assert stats['bytes'] == sum(map(len, files.values()))
    assert stats['bytes_per_token'] == pytest.approx(stats['bytes'] / stats['targets'])
    # The stream decodes to the documents in path order, each after a separator.
    tok = text.load_tokenizer('pydoc', vocab_size=300)
    ids = np.concatenate([tokens[0, :1], tokens[:, 1:][mask[:, :-1] > 0]])
    docs = tok.decode(ids).split(tokenizers_.SEPARATOR)
    assert docs == [''] + [files[n].decode() for n in sorted(names[split])] + ['']


def test_a_changed_added_or_removed_file_is_refused_by_name(corpus):
  source, names = corpus
  text.prepare('pydoc', vocab_size=300)
  victim = names['valid'][0]
  (source / victim).write_text('edited', encoding='utf-8')
  with pytest.raises(text.ChangedSourceError, match=rf"valid split.*1 changed \({victim}\)"):
    text.load('pydoc', 'valid', seq_len=16, vocab_size=300)
  text.load('pydoc', 'train', seq_len=16, vocab_size=300)  # other splits still load
  with pytest.raises(text.ChangedSourceError, match='JAXKD_PYDOC_DIR'):
    text.prepare('pydoc', vocab_size=300)
  added = _names({'train': 0, 'valid': 0, 'test': 3}, '.rst.txt')['test'][-1]
  (source / added).write_text('new', encoding='utf-8')
  (source / names['test'][0]).unlink()
  with pytest.raises(text.ChangedSourceError, match=rf'1 added \({added}\); 1 removed'):
    text.load('pydoc', 'test', seq_len=16, vocab_size=300)
  out = text.prepare('pydoc', vocab_size=300, overwrite=True)  # rebuilt from the files now
  assert json.loads((out / 'tokens.json').read_text())['splits']['test']['docs'] == 2


def test_prepared_streams_and_tokenizers_are_checked(corpus):
  source, names = corpus
  out = text.prepare('pydoc', tokenizer='byte')
  np.save(out / 'valid.npy', np.load(out / 'valid.npy')[:-1])
  with pytest.raises(CorruptDataError, match='valid.npy does not match its SHA-256'):
    text.load('pydoc', 'valid', seq_len=16, tokenizer='byte')
  # Code tokenized with the prose tokenizer refuses a retrained prose tokenizer.
  code = source.parent / 'code'
  _write_corpus(code, suffix='.py', seed=1)
  (code / 'test').mkdir()
  (code / 'test' / 'test_x.py').write_text('excluded')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('JAXKD_STDLIB_DIR', str(code))
    out = text.prepare('stdlib', vocab_size=300, tokenizer_corpus='pydoc')
    assert out.name == 'pydoc-bpe300'
    record = json.loads((out.parent / 'source.json').read_text())
    assert not any('test' in f for s in record['splits'].values() for f in s['files'])
    assert record['version'].startswith('CPython ')
    for name in names['train'][:3]:
      (source / name).write_text('the prose changed', encoding='utf-8')
    text.prepare('pydoc', vocab_size=300, overwrite=True)
    with pytest.raises(text.ChangedSourceError, match='tokenized with tokenizer'):
      text.load('stdlib', 'train', seq_len=16, vocab_size=300, tokenizer_corpus='pydoc')
    # Another Python's standard library: named, with the variable to set.
    mp.setenv('JAXKD_STDLIB_DIR', str(code.parent / 'elsewhere'))
    _write_corpus(code.parent / 'elsewhere', suffix='.py', seed=2)
    with pytest.raises(text.ChangedSourceError, match=r'stdlib.*12 changed.*JAXKD_STDLIB_DIR'):
      text.load('stdlib', 'train', seq_len=16, vocab_size=300)


def test_missing_files_name_the_package_and_the_variable(tmp_path, monkeypatch):
  monkeypatch.setenv('JAXKD_PYDOC_DIR', str(tmp_path / 'nothing'))
  with pytest.raises(DataNotFoundError, match='python3.11-doc.*JAXKD_PYDOC_DIR'):
    text.prepare('pydoc', data_dir=tmp_path / 'data')
  with pytest.raises(ValueError, match="known: \\['pydoc', 'stdlib'\\]"):
    text.prepare('wiki', data_dir=tmp_path / 'data')


def test_bpe_training_is_deterministic_and_round_trips():
  rng = np.random.default_rng(0)
  docs = [' '.join(rng.choice(WORDS, size=300)) + '\n\tdef f(x):\n    return x\n'
          for _ in range(30)]
  first = tokenizers_.train_bpe(docs, vocab_size=320)
  second = tokenizers_.train_bpe(docs, vocab_size=320)
  assert first.to_str() == second.to_str() and first.fingerprint == second.fingerprint
  assert first.fingerprint == hashlib.sha256(first.to_str().encode()).hexdigest()
  assert (first.vocab_size, first.sep_id, first.pad_id) == (320, 0, 1)
  assert len(first.encode(docs[0])) < len(docs[0]) / 2  # merges learned
  samples = ['', ' lead and trail  ', 'tabs\t\tand\r\nnewlines\n\n', 'ünïcödé ✓ 😀 中文',
             'literal <|sep|> and <|pad|> stay text', docs[1]]
  for tok in (first, tokenizers_.ByteTokenizer()):
    for sample in samples:
      ids = tok.encode(sample)
      assert ids.dtype == np.int32 and tok.decode(ids) == sample
      assert tok.sep_id not in ids and tok.pad_id not in ids
  byte = tokenizers_.ByteTokenizer()
  assert byte.vocab_size == 258 and byte.decode([104, 256, 105, 257]) == 'h<|sep|>i<|pad|>'
  with pytest.raises(ValueError, match='byte tokenizer'):
    tokenizers_.train_bpe(docs, vocab_size=200)


def test_pack_matches_a_hand_computed_reference():
  stream = np.array([5, 1, 2, 3, 5, 4, 5])  # SEP=5: two documents, [1, 2, 3] and [4]
  packed = text.pack(stream, 4, pad_id=9)
  np.testing.assert_array_equal(packed['tokens'], [[5, 1, 2, 3], [3, 5, 4, 5]])
  np.testing.assert_array_equal(packed['mask'], [[1, 1, 1, 0], [1, 1, 1, 0]])
  packed = text.pack(stream, 5, pad_id=9)
  np.testing.assert_array_equal(packed['tokens'], [[5, 1, 2, 3, 5], [5, 4, 5, 9, 9]])
  np.testing.assert_array_equal(packed['mask'], [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
  packed = text.pack(stream, 16, pad_id=9)
  np.testing.assert_array_equal(packed['tokens'], [[5, 1, 2, 3, 5, 4, 5] + [9] * 9])
  np.testing.assert_array_equal(packed['mask'], [[1] * 6 + [0] * 10])
  # Every transition of a long stream is counted once, in order.
  stream = np.random.default_rng(0).integers(0, 50, size=1001)
  for seq_len in (2, 3, 64, 1000, 1001, 2000):
    packed = text.pack(stream, seq_len, pad_id=99)
    keep = packed['mask'][:, :-1] > 0
    pairs = np.stack([packed['tokens'][:, :-1][keep], packed['tokens'][:, 1:][keep]], -1)
    np.testing.assert_array_equal(pairs, np.stack([stream[:-1], stream[1:]], -1))
    assert (packed['tokens'][-1, 1:][~keep[-1]] == 99).all()
  with pytest.raises(ValueError, match='>= 2'):
    text.pack(stream, 1, pad_id=0)


def test_bits_per_byte():
  assert text.bits_per_byte(np.log(2) * 3.0, 1.5) == pytest.approx(2.0)


@pytest.mark.skipif(not (PYDOC / 'library').is_dir(), reason='python3.11-doc not installed')
def test_the_python_docs_split(tmp_path, monkeypatch):
  monkeypatch.delenv('JAXKD_PYDOC_DIR', raising=False)
  out = text.prepare('pydoc', tokenizer='byte', data_dir=tmp_path)
  stats = {s: text.stats('pydoc', s, tokenizer='byte', data_dir=tmp_path) for s in text.SPLITS}
  assert [stats[s]['docs'] for s in text.SPLITS] == [446, 27, 24]
  assert 10.5e6 < sum(s['bytes'] for s in stats.values()) < 11.5e6
  record = json.loads((out.parent / 'source.json').read_text())
  assert record['folder'] == str(PYDOC)
  assert 'library/functions.rst.txt' in record['splits']['train']['files']
  batch = text.load('pydoc', 'test', seq_len=257, tokenizer='byte', data_dir=tmp_path)
  assert batch['tokens'].shape == (-(-stats['test']['targets'] // 256), 257)
