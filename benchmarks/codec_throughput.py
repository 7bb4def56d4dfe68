"""tf.Example decoding and encoding: our numpy/TF codecs against tfx_bsl's, same process.

The data components decode and encode every example several times: ExampleGen encodes
each row, StatisticsGen decodes each example, Transform decodes the train split twice and
encodes every example it writes. This times, on issue #7's 80-column shape (16 string
fields, 63 floats, 2 int64 labels; and Transform's output: 81 int64 ids), microseconds
per example of

- decoding: tfx_bsl's ``ExamplesToRecordBatchDecoder`` against
  ``components.example_decoding.ExampleDecoder`` (with the schema);
- encoding: tfx_bsl's ``RecordBatchToExamplesEncoder`` against
  ``components.example_encoding.ExampleEncoder``;

in alternating rounds (the machine's speed drifts; the same-round ratio is the figure to
read), and checks on every round that both sides give the same record batch / the same
parsed examples. Prints a table, writes JSON (``--output-json``) and appends a section to
``benchmarks/RESULTS.md`` (``--results-md``, or ``--no-results``).

    .venv/bin/python benchmarks/codec_throughput.py [--rows 20000] [--batch-sizes 1000 100]
"""

import argparse
import os
import sys
import time
from typing import Dict, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import reporting  # noqa: E402


def raw_batch(n: int, rng):
    """ExampleGen's record batch for issue #7's shape."""
    import pyarrow as pa
    columns, names = [], []

    def single(values, value_type):
        offsets = pa.array(np.arange(len(values) + 1, dtype=np.int64))
        return pa.LargeListArray.from_arrays(offsets, pa.array(values, value_type))

    cardinalities = np.geomspace(10, 2000, 16).round().astype(int)
    for i, cardinality in enumerate(cardinalities):
        columns.append(single([b"value_%d" % v for v in rng.zipf(1.3, n) % cardinality],
                              pa.large_binary()))
        names.append(f"cat_{i:02d}")
    for i in range(63):
        columns.append(single(rng.standard_normal(n).astype(np.float32), pa.float32()))
        names.append(f"num_{i:02d}")
    for task in ("click", "conversion"):
        columns.append(single(rng.integers(0, 2, n), pa.int64()))
        names.append(task)
    return pa.RecordBatch.from_arrays(columns, names)


def transformed_batch(n: int, rng):
    """Transform's output for the same shape: vocabulary and bucket ids, labels."""
    import pyarrow as pa
    sizes = list(np.geomspace(10, 2000, 16).round().astype(int)) + [21] * 63 + [2, 2]
    columns = [pa.LargeListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int64)),
                                             pa.array(rng.integers(0, size, n)))
               for size in sizes]
    return pa.RecordBatch.from_arrays(columns, [f"field_{i:02d}_xf" for i in range(len(sizes))])


def schema_of(record_batch):
    from tensorflow_metadata.proto.v0 import schema_pb2
    import pyarrow as pa
    schema = schema_pb2.Schema()
    for name, column in zip(record_batch.schema.names, record_batch.columns):
        value_type = column.type.value_type
        feature = schema.feature.add(name=name)
        feature.type = (schema_pb2.INT if value_type == pa.int64() else schema_pb2.FLOAT
                        if value_type == pa.float32() else schema_pb2.BYTES)
    return schema


def time_per_example(fn, batches, n: int) -> float:
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return (time.perf_counter() - start) / n * 1e6


def parsed(examples: List[bytes]):
    import tensorflow as tf
    out = []
    for example in examples:
        features = tf.train.Example.FromString(example).features.feature
        out.append(sorted((k, v.SerializeToString()) for k, v in features.items()))
    return out


def run(rows: int, batch_sizes: List[int], rounds: int) -> List[Dict]:
    from tfx_bsl.coders import example_coder
    from components.example_decoding import ExampleDecoder
    from components.example_encoding import ExampleEncoder

    rng = np.random.default_rng(0)
    results = []
    for shape, make in (("raw", raw_batch), ("transformed", transformed_batch)):
        batch = make(rows, rng)
        schema = schema_of(batch)
        tfx_encoder = example_coder.RecordBatchToExamplesEncoder()
        our_encoder = ExampleEncoder()
        examples = tfx_encoder.encode(batch)
        tfx_decoder = example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString())
        our_decoder = ExampleDecoder(schema.SerializeToString())
        for size in batch_sizes:
            record_batches = [batch.slice(i, size) for i in range(0, rows, size)]
            serialized = [examples[i:i + size] for i in range(0, rows, size)]
            sides = {
                "encode": {"tfx_bsl": tfx_encoder.encode, "ours": our_encoder.encode},
                "decode": {"tfx_bsl": tfx_decoder.DecodeBatch, "ours": our_decoder.DecodeBatch},
            }
            # Same results, checked on a sample before timing.
            assert parsed(our_encoder.encode(record_batches[0])) == parsed(
                tfx_encoder.encode(record_batches[0]))
            assert our_decoder.DecodeBatch(serialized[0]).equals(
                tfx_decoder.DecodeBatch(serialized[0]))
            for op, fns in sides.items():
                inputs = record_batches if op == "encode" else serialized
                times = {side: [] for side in fns}
                for r in range(rounds):
                    order = list(fns) if r % 2 == 0 else list(fns)[::-1]
                    for side in order:
                        times[side].append(time_per_example(fns[side], inputs, rows))
                ratios = [a / b for a, b in zip(times["tfx_bsl"], times["ours"])]
                row = {"shape": shape, "op": op, "batch": size, "rows": rows,
                       "tfx_bsl_us": float(np.median(times["tfx_bsl"])),
                       "ours_us": float(np.median(times["ours"])),
                       "speedup_median_of_rounds": float(np.median(ratios)),
                       "rounds": {k: [round(t, 3) for t in v] for k, v in times.items()}}
                results.append(row)
                print(f"{shape:12s} {op} batch {size:5d}: tfx_bsl {row['tfx_bsl_us']:6.2f} µs, "
                      f"ours {row['ours_us']:6.2f} µs per example "
                      f"({row['speedup_median_of_rounds']:.2f}x)", flush=True)
    return results


def table(results: List[Dict]) -> str:
    lines = ["| shape | op | batch | tfx_bsl µs/example | ours µs/example | speed-up (median of "
             "rounds) |", "|:--|:--|--:|--:|--:|--:|"]
    for r in results:
        lines.append(f"| {r['shape']} | {r['op']} | {r['batch']} | {r['tfx_bsl_us']:.2f} | "
                     f"{r['ours_us']:.2f} | {r['speedup_median_of_rounds']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output-json",
                        default=os.path.join(HERE, "results", "codec_throughput.json"))
    parser.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    import tfx_bsl
    info = reporting.machine()
    info["tfx_bsl"] = tfx_bsl.__version__
    results = run(args.rows, args.batch_sizes, args.rounds)
    info["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    reporting.save_json(args.output_json, {"machine": info, "results": results})
    text = table(results)
    print(text)
    reporting.append_section(
        None if args.no_results else args.results_md, "tf.Example codecs",
        f"`benchmarks/codec_throughput.py --rows {args.rows} --batch-sizes "
        f"{' '.join(map(str, args.batch_sizes))} --rounds {args.rounds}` on "
        f"{reporting.machine_line(info)}, tfx_bsl {info['tfx_bsl']}; both sides in one process, "
        f"alternating rounds, median of the rounds. Load average {info['load_average_1m']} / "
        f"{info['load_average_1m_after']}.\n\n{text}", info["date"])


if __name__ == "__main__":
    main()
