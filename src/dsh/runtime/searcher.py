"""Images or codes in, their nearest items out: :class:`Searcher` = an :class:`~dsh.runtime.encoder.Encoder` and
an index (any :class:`dsh.index.base.Index`) with its catalog (label, class name, path, key of every item).

>>> s = Searcher.open("db.dshidx")                  # the model that built the index is found from it
>>> s = Searcher.open(IndexSpec("codes.db", "digits"))   # a Milvus collection; a faiss file by its path
>>> [hit] = s.search(["query.jpg"], k=10)           # one QueryResult per query
>>> hit.hex, [(n.id, n.distance, n.class_name, n.path) for n in hit.neighbors]

``dsh search``, ``dsh serve`` and a user's program all stand on this class. Results are exact and ordered by
(distance, id), whichever backend holds the codes. No torch here (an ONNX model searches too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..codes.bits import check_codes, from_hex, to_binary_string, to_hex
from ..errors import InputError, ModelFileError
from ..index.base import Index, check_k, check_radius
from ..index.flat import HammingIndex
from ..index.store import IndexSpec, open_index


@dataclass
class Neighbor:
    """One result: an item's ``id`` and Hamming ``distance``, and what the catalog knows of it."""

    id: int
    distance: int
    label: int | list[int] | None = None  # a class id (-1: unlabelled), or the ids of a multi-hot row
    class_name: str | list[str] | None = None
    path: str | None = None
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"id", "distance"}`` and those of ``label``, ``class``, ``path``, ``key`` that are known."""
        out: dict[str, Any] = {"id": self.id, "distance": self.distance}
        for name, value in (("label", self.label), ("class", self.class_name), ("path", self.path),
                            ("key", self.key)):
            if value is not None:
                out[name] = value
        return out


@dataclass
class QueryResult:
    """A query's code (``uint8[nbytes]``, and as hex and bits, most significant bit first) and its neighbours."""

    code: np.ndarray
    hex: str
    bits: str
    neighbors: list[Neighbor] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"code": f"0x{self.hex}", "bits": self.bits, "results": [n.to_dict() for n in self.neighbors]}


def model_record(encoder) -> dict[str, str]:
    """What an index remembers of the model that made its codes (``metadata["model"]``)."""
    return {"path": str(Path(encoder.source).resolve()), "fingerprint": encoder.fingerprint}


class Searcher:
    """Search an index by images (encoded with ``encoder``) or by codes.

    ``encoder`` may be ``None`` for code-only searches; :meth:`open` loads it on the first image query. Unless
    ``force``, an encoder whose fingerprint differs from the one the index records is refused: its codes would
    be compared with codes of another model, and the results would mean nothing.

    ``close()`` (or ``with``) closes the index where :meth:`open` opened it; an index passed in stays the
    caller's to close.
    """

    def __init__(self, index: Index, encoder=None, *, force: bool = False, name: str = "index",
                 model_source: str | os.PathLike | None = None, encoder_options: dict | None = None):
        self.index = index
        self.name = name
        self.force = force
        self._model_source = model_source
        self._encoder_options = dict(encoder_options or {})
        self._encoder = None
        self._owns_index = False
        if encoder is not None:
            self._set_encoder(encoder)

    @classmethod
    def open(cls, index: Index | IndexSpec | str | os.PathLike, model: str | os.PathLike | None = None, *,
             mmap: bool = True, force: bool = False, **encoder_options: Any) -> "Searcher":
        """Open an index (a path or an :class:`~dsh.index.store.IndexSpec`, by
        :func:`~dsh.index.store.open_index`: a dsh index file, memory-mapped by default, a faiss file or a Milvus
        collection), or take one already open, and remember which model encodes image queries: ``model`` (a run
        folder, checkpoint or exported model file), else the one the index was built with."""
        owns = isinstance(index, (str, os.PathLike, IndexSpec))
        opened = open_index(index, mmap=mmap) if owns else index
        try:
            out = cls(opened, force=force, name=str(index), model_source=model or recorded_model(opened),
                      encoder_options=encoder_options)
        except BaseException:
            if owns:
                opened.close()
            raise
        out._owns_index = owns
        return out

    def close(self) -> None:
        """Close the index if :meth:`open` opened it."""
        if self._owns_index:
            self.index.close()
            self._owns_index = False

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the model -----------------------------------------------------------------------------------------------

    @property
    def encoder(self):
        """The encoder for image queries, loaded on first use."""
        if self._encoder is None:
            if self._model_source is None:
                raise InputError(f"{self.name} does not name the model that made it: give a model (--run or "
                                 f"--model) to encode images")
            from .encoder import Encoder

            self._set_encoder(Encoder.from_file(self._model_source, **self._encoder_options))
        return self._encoder

    def _set_encoder(self, encoder) -> None:
        if encoder.nbits != self.index.nbits:
            raise ModelFileError(f"{encoder.source} makes {encoder.nbits}-bit codes but {self.name} holds "
                                 f"{self.index.nbits}-bit codes")
        made_by = (self.index.metadata.get("model") or {}).get("fingerprint")
        if made_by and made_by != encoder.fingerprint and not self.force:
            raise ModelFileError(f"{encoder.source} is not the model that made the codes in {self.name} "
                                 f"(fingerprint {encoder.fingerprint[:12]} vs {made_by[:12]}); its codes would "
                                 f"not be comparable (force to search anyway)")
        self._encoder = encoder

    # -- searching -----------------------------------------------------------------------------------------------

    def encode(self, images: Any):
        """Images -> :class:`~dsh.runtime.encoder.Encoded` with this searcher's encoder."""
        return self.encoder.encode(images)

    def search(self, images: Any, k: int | None = 10, radius: int | None = None) -> list[QueryResult]:
        """Images (anything :meth:`Encoder.encode` takes) -> one :class:`QueryResult` per image."""
        return self.search_codes(self.encode(images).codes, k=k, radius=radius)

    def search_hex(self, hexes: Sequence[str], k: int | None = 10, radius: int | None = None) -> list[QueryResult]:
        """Hex codes as :func:`dsh.codes.bits.to_hex` prints them -> one :class:`QueryResult` each."""
        codes = np.concatenate([from_hex(h, self.index.nbits) for h in hexes]) if len(hexes) else \
            np.zeros((0, (self.index.nbits + 7) // 8), np.uint8)
        return self.search_codes(codes, k=k, radius=radius)

    def search_codes(self, codes: np.ndarray, k: int | None = 10, radius: int | None = None) -> list[QueryResult]:
        """``uint8[nq, nbytes]`` codes -> one :class:`QueryResult` each: the ``k`` nearest items, or with
        ``radius`` every item within that Hamming distance (inclusive), ordered by (distance, id)."""
        codes = check_codes(codes, self.index.nbits, name="query codes")
        nbits = self.index.nbits
        # the results and their records together: a remote index answers both in one request (and a search
        # followed by a lookup would cost two, and could see two states of an index that others change)
        if radius is not None:
            # beyond nbits every item is within the radius already
            lims, D, I, records = self.index.range_search_records(codes, min(check_radius(radius), nbits))
        else:
            lims, D, I, records = self.index.search_records(codes, check_k(k))
        hexes, bits = to_hex(codes, nbits), to_binary_string(codes, nbits)
        return [QueryResult(codes[j].copy(), hexes[j], bits[j],
                            self.neighbors(D[lims[j] : lims[j + 1]], I[lims[j] : lims[j + 1]],
                                           records[lims[j] : lims[j + 1]]))
                for j in range(codes.shape[0])]

    def _records(self, ids: list[int]) -> list[dict]:
        # lookup, not the catalog: a remote index reads only these records (and one without a catalog gives
        # {"id": id}, which adds nothing to a Neighbor)
        return self.index.lookup(ids) if ids else []

    def neighbors(self, distances: np.ndarray, ids: np.ndarray, records: list[dict] | None = None
                  ) -> list[Neighbor]:
        """Result arrays -> :class:`Neighbor` records, with the catalog's fields where the index has a catalog
        (``records``: those of ``ids`` already looked up)."""
        ids = [int(i) for i in ids]
        if records is None:
            records = self._records(ids)
        return [Neighbor(id=i, distance=int(d), label=r.get("label"), class_name=r.get("class"),
                         path=r.get("path"), key=r.get("key"))
                for i, d, r in zip(ids, distances, records)]


def recorded_model(index: Index) -> str | None:
    """The model an index file says made its codes (``metadata["model"]["path"]``)."""
    return (index.metadata.get("model") or {}).get("path")


def index_folder(encoder, folder: str | os.PathLike, *, progress: bool = False) -> HammingIndex:
    """Encode every image under ``folder`` (streaming, as :meth:`Encoder.iter_encode_files`) into a new index
    whose catalog holds each image's absolute path and the label of its class folder (-1 outside one); the index
    records ``folder`` as its ``image_root`` (what ``dsh serve`` may show pictures from) and the model
    (:func:`model_record`), so a :class:`Searcher` finds it again."""
    from ..utils.imageio import ImageList

    listing = ImageList(folder, encoder.class_names or None)
    root = listing.root.resolve()
    index = HammingIndex(encoder.nbits)
    for start, enc in encoder.iter_encode_files(listing.full_paths(), progress=progress):
        stop = start + enc.codes.shape[0]
        index.add(enc.codes, labels=listing.labels[start:stop], class_names=listing.class_names,
                  paths=[str(root / f) for f in listing.files[start:stop]])
    index.metadata.update(source=str(root), image_root=str(root), model=model_record(encoder))
    return index


def index_codes(codes, source: str | os.PathLike, encoder=None) -> HammingIndex:
    """A new index of a code file's codes (a :class:`~dsh.codes.codefile.CodeFile`, read from ``source``), its labels,
    paths and class names in the catalog (and, where there are paths, the folder that holds them all as the index's
    ``image_root``: what ``dsh serve`` may show pictures from). With ``encoder`` (the model that made them), the
    index records it (:func:`model_record`), after checking that it makes codes of the same length."""
    if encoder is not None and encoder.nbits != codes.nbits:
        raise InputError(f"{encoder.source} makes {encoder.nbits}-bit codes but {source} holds "
                         f"{codes.nbits}-bit codes")
    index = HammingIndex(codes.nbits)
    index.add(codes.codes, labels=codes.labels, paths=None if codes.paths is None else [str(p) for p in codes.paths],
              class_names=None if codes.class_names is None else [str(n) for n in codes.class_names])
    index.metadata["source"] = str(Path(source).resolve())
    if codes.paths is not None and len(codes.paths):
        # the folder the service may show these images from: the deepest one that holds them all
        folders = [os.path.dirname(os.path.abspath(str(p))) for p in codes.paths]
        index.metadata["image_root"] = os.path.commonpath(folders)
    if encoder is not None:
        index.metadata["model"] = model_record(encoder)
    return index
