"""Former home of the dataset writer, card and push: kept only while rlaif.pipeline.run still imports from here."""

from __future__ import annotations

from rlaif.pipeline.dataset_card import DatasetCardInfo
from rlaif.pipeline.dataset_writer import write_dataset
from rlaif.pipeline.push import PushError, push_dataset

__all__ = ["DatasetCardInfo", "PushError", "push_dataset", "write_dataset"]
