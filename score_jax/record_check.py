"""Reads from a data set that name the file and record of a damaged example.

A prepared data set is a few files of records (tfds array_record; the official FFHQ / CelebA-HQ
TFRecords). When a record is damaged (a bad disk block, a truncated copy), its reader raises a
checksum or parse error from deep inside the pipeline; `CheckedSource` turns that into one
`DamagedRecordError` naming the file, the record's position in it, and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from score_jax.errors import InvalidInputError, UserError


class DamagedRecordError(InvalidInputError):
    """A record of a prepared data set cannot be read or decoded."""


def record_location(source: Any, index: int) -> tuple[str, int]:
    """(file, position in that file) of record `index` of a source; ('?', index) if it won't say.

    TFRecord sources answer through their `locate`; tfds array_record sources through the read
    instructions of their array_record data source (one per file, in order).
    """
    locate = getattr(source, "locate", None)
    if locate is not None:
        return locate(index)
    instructions = getattr(getattr(source, "data_source", None), "_read_instructions", None) or []
    first = 0
    for part in instructions:
        n = part.end - part.start
        if index < first + n:
            return str(part.filename), part.start + index - first
        first += n
    return "?", index


class CheckedSource(Sequence):
    """`source` (len, [i], optional __getitems__) whose read failures name the damaged record."""

    def __init__(self, source: Sequence[dict], name: str, remedy: str):
        self.source, self.name, self.remedy = source, name, remedy

    def __len__(self) -> int:
        return len(self.source)

    def _damaged(self, index: int, error: Exception) -> DamagedRecordError:
        path, position = record_location(self.source, index)
        reason = " ".join(str(error).split())[:300]
        return DamagedRecordError(
            f"data set {self.name}: record {index} (record {position} of file {path}) cannot be "
            f"read ({type(error).__name__}: {reason}); the prepared data set is damaged. "
            f"{self.remedy}")

    def __getitem__(self, index: int) -> Any:
        try:
            return self.source[index]
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader or decoder failure on stored bytes
            raise self._damaged(int(index), e) from None

    def __getitems__(self, indices: Sequence[int]) -> list:
        getitems = getattr(self.source, "__getitems__", None)
        if getitems is not None:
            try:
                return list(getitems(indices))
            except Exception:  # noqa: BLE001 - read one by one to find and name the damaged one
                pass
        return [self[i] for i in indices]
