"""The vocabulary of a database: the one it stores, or one fitted before its first descriptor.

A model that needs a vocabulary (``lite0-vlad``) gets it from a sample of the first photos a new
database is given. Only the sample goes through the network here; each photo's share of local
features is cached as it comes (``.vocabulary-fit``), so an interrupted fit resumes where it
stopped, and the sample's features are kept to be pooled afterwards instead of decoded twice.
How the sample is drawn and fitted is :mod:`geoloc.models.vocabulary`'s, shared with fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

from geoloc.indexing import refit
from geoloc.database import Database
from geoloc.database.layout import FIT_CACHE
from geoloc.descriptors.database_model import max_side_of, store_vocabulary, vocabulary_manifest
from geoloc.errors import DatabaseError
from geoloc.files import display_path
from geoloc.progress import first_batch_status
from geoloc.models.vocabulary import FeatureSampler, FitCache, fit_vocabulary, spread


#: Local features of the vocabulary sample kept in memory, to pool them after fitting instead of
#: decoding those photos again (beyond this, the rest are simply decoded twice).
KEEP_FEATURES_BYTES = 256 * 2**20


def ensure_vocabulary(database: Database, model, extractor, to_index: list[Path], run):
    """The database's vocabulary, or a new one fitted on a sample and stored before the first
    descriptor. Only the sample goes through the network here, and each photo's share of
    features is cached as it comes, so an interrupted fit resumes where it stopped.

    ``run`` is the indexing run (:class:`geoloc.indexing.run.IndexRun`): its config, progress and
    error reporting, and the photos it already found unusable; its declared ``stage``,
    ``sample`` and ``fitted`` are kept current here, so that an interrupted fit says how far
    it got.

    Returns ``(state, kept)``: state is "stored", "fitted" or None; kept holds batches of
    ``(photos, local features)`` of the sample, ready to be pooled and stored.
    """
    config = run.config
    if database.has_vocabulary():  # loaded with the model, and checked against the manifest
        if not database.manifest.get("vocabulary_sha256"):  # a 0.1.0 database killed between two writes
            database.update_manifest(vocabulary_manifest(database, model, {}))
        return "stored", []
    if not model.needs_vocabulary:
        return None, []
    if len(database):
        raise DatabaseError(
            f"database {display_path(database.path)} is damaged: it holds descriptors but "
            "not the vocabulary they were computed with; index into a new --db"
        )
    if not to_index:
        return None, []
    # The sample, then the other photos in the same spread order: one that cannot be read is
    # replaced by the next, so junk among the photos does not starve the fit.
    target = min(len(to_index), config.vocabulary_photos)
    sample = spread(to_index, target)
    chosen = set(sample)
    candidates = sample + [p for p in spread(to_index, len(to_index)) if p not in chosen]
    position = {path: i for i, path in enumerate(candidates)}
    sampler = FeatureSampler(target, max_features=config.vocabulary_features, seed=config.seed)
    cache = FitCache(database.path / FIT_CACHE, sample, {
        "seed": config.seed, "max_features": config.vocabulary_features, "max_side": max_side_of(database),
        "weights": database.manifest.get("model_weights_hash")})
    for i in cache.done():
        picked = cache.get(i)
        if picked is not None and i < len(candidates):
            sampler.put(i, picked)
    run.stage, run.sample, run.fitted = "fitting", target, len(sampler)
    run.progress.stage("Fitting vocabulary", target)
    run.progress.advance(len(sampler))
    kept, kept_bytes = [], 0
    tried = 0

    def failed(item) -> None:  # reported now, and not decoded again by the indexing pass
        run.on_error(item.error)

    if len(sampler) < target:
        run.progress.status(first_batch_status(candidates, run.batch_size, again=False))
    while len(sampler) < target and tried < len(candidates):
        wanted = target - len(sampler)
        todo = []
        while len(todo) < wanted and tried < len(candidates):
            i = tried
            tried += 1
            if i not in sampler and candidates[i] not in run.failed:
                todo.append(candidates[i])
        fn = model.features_with_map if database.maps else model.local_features
        for items, out in extractor.batches(todo, fn, on_error=failed):
            feats, maps = out if database.maps else (out, None)
            for item, one in zip(items, feats):
                i = position[item.path]
                cache.put(i, sampler.add(i, one))
            run.fitted = len(sampler)
            size = feats.nbytes + (maps.nbytes if maps is not None else 0)
            if kept_bytes + size <= KEEP_FEATURES_BYTES:
                kept.append((items, feats, maps))
                kept_bytes += size
            run.progress.advance(len(items))
    features = sampler.sample()
    unreadable = len([p for p in candidates[:tried] if p in run.failed])
    hint = "index more photos at once, or use a larger --max-side"
    if unreadable:
        hint = (f"{unreadable} of the {tried} photos tried could not be read (see the warnings above); "
                f"{hint}")
    run.progress.status(f"clustering {features.shape[0]:,} local features into "
                        f"{model.num_clusters} visual words (k-means)")
    fit_vocabulary(model, features, len(sampler), seed=config.seed, hint=hint)
    store_vocabulary(database, model, {"vocabulary_photos": len(sampler),
                                       "vocabulary_features": int(features.shape[0])})
    cache.clear()
    if config.vocabulary_advice and refit.is_provisional(len(sampler), config):
        run.progress.message(refit.provisional_note(len(sampler), config))
    return "fitted", kept
