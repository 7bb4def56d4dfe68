"""The Beam pipeline our data components run on: Beam's, with two of Beam's own overrides.

Before it runs, ``FastPipeline`` swaps (``PTransformOverride``, applied by ``replace_all``):

- every batch write of gzipped TFRecords for one at gzip level 1
  (``gzip_tfrecords.FastGzipTFRecordWrites``): Transform's materialized examples;
- TFXIO's tf.Example decoding for ``tf.io.parse_example`` with tfx_bsl's decoder as the
  fallback (``example_decoding.FastExampleDecoding``): StatisticsGen's and Transform's reads.

Both leave what is written and what is decoded as TFX's own components write and decode it.
``FastPipelineExecutor`` is the mixin that gives a TFX Beam executor this pipeline.
"""

import apache_beam as beam

from components import example_decoding, gzip_tfrecords


class FastPipeline(beam.Pipeline):
    """A Beam pipeline with the overrides above."""

    def run(self, test_runner_api="AUTO"):
        self.replace_all([gzip_tfrecords.FastGzipTFRecordWrites(),
                          example_decoding.FastExampleDecoding()])
        return super().run(test_runner_api)


class FastPipelineExecutor:
    """Mixin for a ``BaseBeamExecutor`` subclass: its pipeline is a ``FastPipeline``."""

    def _make_beam_pipeline(self):
        if self._make_beam_pipeline_fn is not None:  # The orchestrator makes the pipeline.
            return super()._make_beam_pipeline()
        return FastPipeline(argv=self._beam_pipeline_args)
