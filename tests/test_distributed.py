"""`jaxkd.distributed.rendezvous`: the processes of a run meet before JAX starts; a missing
process, a duplicate id, another process count or other settings stop every process with one
clear message within the time-out."""
import multiprocessing
import socket

import pytest

from jaxkd import distributed


def _port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _meet(process_id, num_processes, settings, port, results):
  try:
    distributed.rendezvous(f'127.0.0.1:{port}', num_processes, process_id, settings, timeout=3)
    results.put((process_id, 'ok'))
  except ValueError as error:
    results.put((process_id, str(error)))


def _run(processes):
  """`[(process_id, num_processes, settings)]` met at one port -> `{process_id: outcomes}`."""
  port, context = _port(), multiprocessing.get_context('spawn')
  results = context.Queue()
  started = [context.Process(target=_meet, args=(*p, port, results)) for p in processes]
  for p in started:
    p.start()
  outcomes = [results.get(timeout=30) for _ in started]
  for p in started:
    p.join(timeout=30)
  return sorted(outcomes)


SETTINGS = {'config': {'seed': 0, 'optimizer': {'learning_rate': 0.1}}}
OTHER = {'config': {'seed': 0, 'optimizer': {'learning_rate': 0.5}}}


@pytest.mark.parametrize('processes,words', [
    ([(0, 2, SETTINGS), (1, 2, SETTINGS)], None),
    ([(0, 2, SETTINGS), (1, 2, OTHER)], 'config.optimizer.learning_rate: 0.1 vs 0.5'),
    ([(0, 2, SETTINGS), (1, 3, SETTINGS)], 'process 1 was started with --num_processes=3'),
    ([(0, 3, SETTINGS), (1, 3, SETTINGS), (1, 3, SETTINGS)],
     'two processes were started with --process_id=1'),
    ([(0, 2, SETTINGS)], 'processes [1] of 2 did not join process 0'),
    ([(1, 2, SETTINGS)], 'no answer from process 0'),
])
def test_rendezvous(processes, words):
  outcomes = _run(processes)
  assert len(outcomes) == len(processes)
  for _, outcome in outcomes:
    assert outcome == 'ok' if words is None else words in outcome, outcomes


def test_timeout_setting_is_checked(monkeypatch):
  monkeypatch.setenv(distributed.TIMEOUT_ENV, '-3')
  with pytest.raises(ValueError, match='JAXKD_DISTRIBUTED_TIMEOUT'):
    distributed.initialize('127.0.0.1:1', 2, 0)
