"""A trained run judged the standard way: encode its query and database with the best checkpoint, then evaluate.

The query and database are the run's protocol's parts (``dsh.data.protocols``), or, without a protocol, the test split
against the train split (a ``list`` dataset: against its own ``database`` split). The code files written are
exactly those of ``dsh encode``, so ``dsh eval`` re-checks the figures.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codes.codefile import CodeFile, save_codes
from ..config import TrainConfig
from ..data.splits import load_parts, protocol_topk
from ..errors import DataError, InputError
from ..eval.metrics import Evaluation, evaluate
from ..runtime.encoder import Encoder


@dataclass
class RunEvaluation:
    query: CodeFile  # codes, labels, class names, and u when asked for
    database: CodeFile
    metrics: Evaluation  # mAP (the protocol's cut-off too), precision within radius 2, curves
    encode_seconds: float
    eval_seconds: float
    model: dict  # dsh.runtime.searcher.model_record of the encoder used: what an index of these codes records


def judged_parts(cfg, data_root: str | os.PathLike | None = None) -> tuple:
    """The query and database images a run of settings ``cfg`` (a :class:`dsh.config.TrainConfig`) is judged on
    (module docstring), as two :class:`dsh.data.ImageSet`; ``data_root`` where the images are now, if not where
    the run recorded. Nothing is downloaded."""
    options = {**cfg.data_options(), "download": False}
    if data_root is not None:
        options["data_root"] = data_root
    own_database = cfg.dataset.lower() == "list"  # multi-label lists have their own database.txt
    parts = ("query", "database") if cfg.protocol else ("test", "database") if own_database else ("test", "train")
    query, database = load_parts(cfg.dataset, parts, **options)
    return query, database


def encode_and_evaluate(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    keep_u: bool = False,
    data_root: str | os.PathLike | None = None,
) -> RunEvaluation:
    """Encode the run's query and database parts with its best checkpoint and evaluate them (mAP with the
    protocol's cut-off, precision within radius 2, curves). With ``out_dir``, write ``query.npz`` and
    ``database.npz`` there; ``keep_u`` keeps the query's real outputs ``u`` (float32[n, nbits]) for maps."""
    encoder = Encoder.from_run(run_dir)
    cfg = TrainConfig.of_model(encoder.info, encoder.source)
    if cfg is None:
        raise DataError(f"{encoder.source}: the model records no training settings, so its test images are unknown")
    protocol = cfg.protocol
    t0 = time.perf_counter()
    query, database = judged_parts(cfg, data_root)
    encode = run_encoding(run_dir, cfg, encoder)
    q_u, q_codes = encode(query.images)
    db_codes = encode(database.images)[1]
    encode_seconds = time.perf_counter() - t0
    names = np.asarray(list(query.class_names))
    q = CodeFile(q_codes, encoder.nbits, query.labels.numpy(), u=q_u if keep_u else None, class_names=names)
    db = CodeFile(db_codes, encoder.nbits, database.labels.numpy(), class_names=names)
    if out_dir is not None:
        save_codes(Path(out_dir) / "query.npz", q)
        save_codes(Path(out_dir) / "database.npz", db)
    t0 = time.perf_counter()
    metrics = evaluate(q.codes, db.codes, q.labels, db.labels, encoder.nbits, topk=protocol_topk(protocol))
    from ..runtime.searcher import model_record

    return RunEvaluation(q, db, metrics, encode_seconds, time.perf_counter() - t0, model_record(encoder))


def run_encoding(run_dir, cfg: TrainConfig, encoder: Encoder):
    """``uint8[N, C, H, W]`` tensor -> ``(u float32[N, nbits], codes uint8[N, nbytes])``: for a pretrained run that
    trained its head alone, the head on the backbone's cached features (the database's features are then computed
    once for every code length and head); for any other run, ``encoder``."""
    from ..models.pretrained import is_pretrained

    if not (is_pretrained(cfg.model) and cfg.tune == "head"):
        return lambda images: tuple(encoder.encode_array(images.numpy()))
    from ..models.checkpoint import BEST, load_model
    from .backbone import encode_on_cached_features

    loaded = load_model(run_dir, BEST)
    return lambda images: encode_on_cached_features(loaded.model, loaded.normalizer, images,
                                                    tta_flip=encoder.tta_flip)


def model_part(encoder: Encoder, part: str, *, dataset: str | None = None,
               data_root: str | os.PathLike | None = None, protocol: str | None = None, download: bool = True):
    """Part ``part`` (a split, or a protocol's ``query`` / ``database``) of the images ``encoder``'s model was
    trained on, as a :class:`dsh.data.ImageSet`: by default the run's dataset with the run's settings (data root,
    protocol, validation carve), so that ``query`` and ``database`` are the parts the run is judged on. Another
    ``dataset`` gets only its own defaults; ``protocol="none"``: the dataset's own splits, whatever the run's."""
    cfg = TrainConfig.of_model(encoder.info, encoder.source)
    dataset = dataset or (cfg.dataset if cfg else None)
    if dataset is None:
        raise InputError(f"{encoder.source} does not say which dataset it was trained on: name it (--dataset)")
    options = cfg.data_options() if cfg is not None and dataset == cfg.dataset else {}
    options["download"] = download
    if data_root is not None:
        options["data_root"] = data_root
    if protocol is not None:
        options["protocol"] = None if protocol == "none" else protocol
    return load_parts(dataset, (part,), **options)[0]
