"""Every vocabulary of the ``preprocessing_fn`` in one pass over the data.

Each ``tft.vocabulary`` call is its own chain of Beam stages (count, merge, prune, order,
write) with its own pipeline-construction and per-stage cost; with tens of categorical
fields that, not the counting, was most of Transform's analysis time (benchmarks/RESULTS.md,
session 10). ``compute_and_apply_vocabularies`` counts the values of every column in one
keyed combine, through TFT's ``ptransform_analyzer``, and writes the files ``tft.vocabulary``
writes:

- values by decreasing count, ties in reverse byte order;
- values seen fewer than ``frequency_threshold`` times dropped, then the first ``top_k`` kept;
- empty strings and values containing a line break left out (the text file format);
- an empty vocabulary written as TFT's one placeholder line, so that its table initializes.

Each column is then looked up with ``tft.apply_vocabulary``, so the ids, the OOV buckets and
the transformed schema's domains are TFT's own. The combine is keyed by vocabulary: on a
distributed runner each vocabulary's counts meet on one worker, as in ``tft.vocabulary``.

With Transform's analyzer cache on, this analyzer is recomputed on every run (TFT's
``CacheablePTransformAnalyzer`` takes a single output, and each vocabulary is an asset output
of its own); the other analyzers (the quantiles) still come from the cache.
"""

import os
from typing import Dict, List, Mapping, NamedTuple, Sequence, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform import analyzers as tft_analyzers
from tensorflow_transform.beam import experimental as tft_beam_experimental

# tft.vocabulary's filter for the text file format: an empty value, or one with \n or \r.
_SKIPPED_VALUES = r"^$|\C*[\n\r]\C*"
# What TFT writes for an empty vocabulary (a lookup table cannot start from an empty file).
_EMPTY_VOCABULARY_VALUE = tft_analyzers.get_empy_vocabulary_dummy_value(tf.string)[1]

Counts = Dict[bytes, int]  # value -> count


class Vocabulary(NamedTuple):
    """One column's vocabulary: its name and ``tft.vocabulary``'s limits."""

    name: str  # The vocab_filename: TFTransformOutput.vocabulary_*_by_name(name) read it.
    frequency_threshold: int = 1
    top_k: int = 0  # 0: no limit.
    num_oov_buckets: int = 1


def ordered_values(counts: Counts, frequency_threshold: int, top_k: int) -> List[bytes]:
    """``tft.vocabulary``'s order and limits: count descending, ties in reverse byte order."""
    kept = sorted(((count, value) for value, count in counts.items()
                   if count >= frequency_threshold), reverse=True)
    values = [value for _, value in kept]
    return values[:top_k] if top_k else values


def asset_filename(name: str) -> str:
    """The file name under which TFTransformOutput.vocabulary_file_by_name(name) looks."""
    return tft_analyzers.sanitized_vocab_filename(filename=name)


class _CountValues(beam.CombineFn):
    """Batch-reduced ``(values [n], counts [n])`` pairs of one column -> its value counts."""

    def create_accumulator(self) -> Counts:
        return {}

    def add_input(self, counts: Counts, batch: Tuple[np.ndarray, np.ndarray]) -> Counts:
        values, value_counts = batch
        for value, count in zip(values.tolist(), value_counts.tolist()):
            counts[value] = counts.get(value, 0) + count
        return counts

    def merge_accumulators(self, accumulators) -> Counts:
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for counts in accumulators:
            for value, count in counts.items():
                merged[value] = merged.get(value, 0) + count
        return merged

    def extract_output(self, counts: Counts) -> Counts:
        return counts


class _CountAndWriteVocabularies(tft_beam_experimental.PTransformAnalyzer):
    """Batches of ``(values_0, counts_0, values_1, counts_1, ...)`` -> each vocabulary's path.

    Returns one PCollection per vocabulary, each holding its file's path (bytes).
    """

    def __init__(self, vocabularies: Sequence[Vocabulary]):
        super().__init__()
        self._vocabularies = tuple(vocabularies)

    def _write(self, index: int, counts: Counts) -> Tuple[int, bytes]:
        vocabulary = self._vocabularies[index]
        values = ordered_values(counts, vocabulary.frequency_threshold, vocabulary.top_k)
        path = os.path.join(self.base_temp_dir, asset_filename(vocabulary.name))
        tf.io.gfile.makedirs(self.base_temp_dir)
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(b"".join(value + b"\n" for value in values or [_EMPTY_VOCABULARY_VALUE]))
        return index, path.encode()

    def _to_outputs(self, written: List[Tuple[int, bytes]]):
        paths = dict(written)
        for index in range(len(self._vocabularies)):
            # No batch at all (an empty dataset): every vocabulary is empty.
            path = paths[index] if index in paths else self._write(index, {})[1]
            yield beam.pvalue.TaggedOutput(str(index), path)

    def expand(self, batches):
        tags = [str(i) for i in range(len(self._vocabularies))]
        outputs = (
            batches
            | "ByVocabulary" >> beam.FlatMap(lambda batch: enumerate(zip(batch[0::2], batch[1::2])))
            | "CountValues" >> beam.CombinePerKey(_CountValues())
            | "Write" >> beam.MapTuple(self._write)
            | "Collect" >> beam.combiners.ToList()
            | "Split" >> beam.FlatMap(self._to_outputs).with_outputs(*tags))
        return tuple(outputs[tag] for tag in tags)


def compute_and_apply_vocabularies(
        columns: Mapping[str, tf.Tensor],
        vocabularies: Sequence[Vocabulary]) -> Dict[str, tf.Tensor]:
    """String ``[batch]`` columns -> int64 ``[batch]`` ids, every vocabulary in one pass.

    ``columns`` is keyed by ``Vocabulary.name``; the result, keyed alike, is what
    ``tft.compute_and_apply_vocabulary(columns[v.name], top_k=v.top_k or None,
    frequency_threshold=v.frequency_threshold, num_oov_buckets=v.num_oov_buckets,
    vocab_filename=v.name)`` gives for each ``v``, files and asset map included.
    """
    analyzer_inputs = []
    for vocabulary in vocabularies:
        # Reduced per batch, then filtered on the batch's distinct values, by a gather:
        # tf.boolean_mask's graph building was a quarter of the preprocessing_fn's trace,
        # which Transform pays about ten times a run (benchmarks/RESULTS.md, session 17).
        values, _, counts = tf.unique_with_counts(columns[vocabulary.name], out_idx=tf.int64)
        kept = tf.reshape(tf.where(tf.logical_not(
            tf.strings.regex_full_match(values, _SKIPPED_VALUES))), [-1])
        analyzer_inputs += [tf.gather(values, kept), tf.gather(counts, kept)]
    n = len(vocabularies)
    paths = tft.experimental.ptransform_analyzer(
        analyzer_inputs, _CountAndWriteVocabularies(vocabularies),
        output_dtypes=[tf.string] * n, output_shapes=[[]] * n,
        output_asset_default_values=[_EMPTY_VOCABULARY_VALUE] * n, name="vocabularies")
    ids = {}
    for vocabulary, path in zip(vocabularies, paths):
        tft.annotate_asset(vocabulary.name, asset_filename(vocabulary.name))
        ids[vocabulary.name] = tft.apply_vocabulary(
            columns[vocabulary.name], path, num_oov_buckets=vocabulary.num_oov_buckets)
    return ids
