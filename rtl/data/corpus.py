"""The corpus: undersampled, size-normalised source images in Parquet shards + manifest.json.

Build side in `rtl.data.corpus_build` (Ray Data), read side in `rtl.data.corpus_view` (pyarrow only);
this module re-exports both so callers import `rtl.data.corpus`. Layout and schema: docs/CONTRACTS.md.
"""

from __future__ import annotations

from rtl.data.corpus_build import build_corpus, size_bucket
from rtl.data.corpus_view import SCHEMA, CorpusView, decode_row, open_corpus

__all__ = ["SCHEMA", "CorpusView", "build_corpus", "decode_row", "open_corpus", "size_bucket"]
