"""compute_and_apply_vocabularies: tft.vocabulary's files, ids and schema, in one analyzer."""

import collections

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.beam import analyzer_cache
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from models import vocabularies
from models.vocabularies import Vocabulary

# Ties at every count, an empty string and values with line breaks (both left out of a text
# vocabulary), a limit by count, a limit by rank, and a vocabulary that ends up empty.
VOCABULARIES = [
    Vocabulary("ties", frequency_threshold=2, top_k=4, num_oov_buckets=1),
    Vocabulary("skipped", num_oov_buckets=2),
    Vocabulary("rare", frequency_threshold=100, num_oov_buckets=1),
]


def _rows(num_rows=300, seed=0):
    rng = np.random.default_rng(seed)
    ties = [b"a", b"b", b"c", b"d", b"e", b"f", b"ab", b"ba"]
    skipped = [b"x", b"", b"y\nz", b"w\r", b"y", b"z z"]
    return [{"ties": [ties[i]], "skipped": [skipped[j]], "rare": [b"r%d" % k]}
            for i, j, k in zip(rng.integers(0, len(ties), num_rows),
                               rng.integers(0, len(skipped), num_rows),
                               rng.integers(0, 50, num_rows))]


METADATA = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(
    {name: tf.io.FixedLenFeature([1], tf.string) for name in ("ties", "skipped", "rare")}))


def _preprocessing_fn(inputs):
    columns = {v.name: tf.reshape(inputs[v.name], [-1]) for v in VOCABULARIES}
    outputs = {f"ours_{name}": ids
               for name, ids in vocabularies.compute_and_apply_vocabularies(columns, VOCABULARIES).items()}
    for v in VOCABULARIES:
        outputs[f"tft_{v.name}"] = tft.compute_and_apply_vocabulary(
            columns[v.name], top_k=v.top_k or None, frequency_threshold=v.frequency_threshold,
            num_oov_buckets=v.num_oov_buckets, vocab_filename=f"tft_{v.name}")
    return outputs


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vocabularies")
    with tft_beam.Context(temp_dir=str(directory / "tmp")):
        (rows, _), transform_fn = (_rows(), METADATA) | tft_beam.AnalyzeAndTransformDataset(
            _preprocessing_fn, output_record_batches=False)
        _ = transform_fn | tft_beam.WriteTransformFn(str(directory / "transform_fn"))
    return rows, tft.TFTransformOutput(str(directory / "transform_fn"))


@pytest.mark.parametrize("name", [v.name for v in VOCABULARIES])
def test_files_are_tft_vocabulary_files(both, name):
    _, output = both
    ours = output.vocabulary_by_name(name)
    assert ours == output.vocabulary_by_name(f"tft_{name}")
    assert output.vocabulary_size_by_name(name) == len(ours)
    with open(output.vocabulary_file_by_name(name), "rb") as f:
        assert f.read() == b"".join(v + b"\n" for v in ours)


def test_limits_order_and_skipped_values(both):
    _, output = both
    ties = output.vocabulary_by_name("ties")
    assert len(ties) == 4  # top_k
    skipped = output.vocabulary_by_name("skipped")
    assert b"" not in skipped and b"y\nz" not in skipped and b"w\r" not in skipped
    assert set(skipped) == {b"x", b"y", b"z z"}
    # Nothing reaches the threshold: TFT's one placeholder line, so the table initializes.
    assert len(output.vocabulary_by_name("rare")) == 1


@pytest.mark.parametrize("name", [v.name for v in VOCABULARIES])
def test_ids_and_schema_domains_are_tft_ones(both, name):
    rows, output = both
    np.testing.assert_array_equal([r[f"ours_{name}"] for r in rows], [r[f"tft_{name}"] for r in rows])
    domains = {f.name: (f.int_domain.min, f.int_domain.max)
               for f in output.transformed_metadata.schema.feature}
    assert domains[f"ours_{name}"] == domains[f"tft_{name}"]


def test_oov_ids_follow_the_vocabulary(both):
    rows, output = both
    size = output.vocabulary_size_by_name("skipped")
    raw = _rows()
    # An empty value is out of the vocabulary: one of the 2 OOV ids after it.
    empty = [r["ours_skipped"] for r, x in zip(rows, raw) if x["skipped"] == [b""]]
    assert empty and all(size <= i < size + 2 for i in empty)


def test_ordered_values_breaks_ties_by_reverse_bytes():
    counts = {b"a": 3, b"b": 3, b"c": 1, b"ab": 3, b"d": 2}
    assert vocabularies.ordered_values(counts, 1, 0) == [b"b", b"ab", b"a", b"d", b"c"]
    assert vocabularies.ordered_values(counts, 2, 0) == [b"b", b"ab", b"a", b"d"]
    assert vocabularies.ordered_values(counts, 2, 2) == [b"b", b"ab"]
    assert vocabularies.ordered_values(counts, 4, 0) == []


def _span_rows(span):
    return _rows(num_rows=300 if span == 0 else 40, seed=span)


def _analyze_spans(directory, spans, cache_dir=None):
    """Analyzes spans with AnalyzeDatasetWithCache, reading the cache of earlier spans."""
    keys = {span: analyzer_cache.DatasetKey(f"span-{span}") for span in spans}
    with tft_beam.Context(temp_dir=str(directory / "tmp")):
        with beam.Pipeline() as pipeline:
            data = {key: pipeline | f"Create{span}" >> beam.Create(_span_rows(span))
                    for span, key in keys.items()}
            cache = {}
            if cache_dir:
                cache = pipeline | "ReadCache" >> analyzer_cache.ReadAnalysisCacheFromFS(
                    str(cache_dir), list(keys.values()))
            transform_fn, cache_output = (data, cache, METADATA) | tft_beam.AnalyzeDatasetWithCache(
                _preprocessing_fn)
            _ = transform_fn | tft_beam.WriteTransformFn(str(directory / "transform_fn"))
            _ = cache_output | analyzer_cache.WriteAnalysisCacheToFS(
                pipeline, str(directory / "cache"), list(keys.values()))
    return tft.TFTransformOutput(str(directory / "transform_fn"))


def test_with_the_analyzer_cache_every_span_is_counted(tmp_path):
    """Cached spans are read again for this analyzer; TFT's vocabularies come from the cache."""
    _analyze_spans(tmp_path / "first", [0])
    output = _analyze_spans(tmp_path / "second", [0, 1], cache_dir=tmp_path / "first" / "cache")
    for v in VOCABULARIES:
        assert output.vocabulary_by_name(v.name) == output.vocabulary_by_name(f"tft_{v.name}")
    def expected(spans):  # "ties": frequency_threshold 2, top_k 4.
        counts = collections.Counter(row["ties"][0] for span in spans for row in _span_rows(span))
        return vocabularies.ordered_values(counts, 2, 4)
    assert output.vocabulary_by_name("ties") == expected([0, 1]) != expected([1])
