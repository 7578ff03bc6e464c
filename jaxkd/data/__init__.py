"""Datasets (TFDS ArrayRecord builders that need no TensorFlow) and the in-memory input pipeline."""

from jaxkd.data._local import CorruptDataError as CorruptDataError
from jaxkd.data._local import DataNotFoundError as DataNotFoundError
from jaxkd.data._local import DatasetInfo as DatasetInfo
from jaxkd.data._local import LocalFileBuilder as LocalFileBuilder
from jaxkd.data._local import RemoteFile as RemoteFile
from jaxkd.data.registry import DATASETS as DATASETS
from jaxkd.data.registry import builder as builder
from jaxkd.data.registry import dataset_sha256 as dataset_sha256
from jaxkd.data.registry import info as info
from jaxkd.data.registry import load_arrays as load_arrays
from jaxkd.data.registry import prepare as prepare
from jaxkd.data.registry import source as source
from jaxkd.data.registry import subset_classes as subset_classes
from jaxkd.data.pipeline import InMemoryDataset as InMemoryDataset
from jaxkd.data import text as text
