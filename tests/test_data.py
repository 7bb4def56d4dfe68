"""models/data.py's reader over real Transform output: every record once, in a seeded order."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from models import data, features


def _transform_output(pipeline_runs):
    import tensorflow_transform as tft
    config, first, _, _ = pipeline_runs
    tft_output = tft.TFTransformOutput(first.uri("Transform.transform_graph"))
    files = data.transformed_files(first.uri("Transform.transformed_examples"), "train")
    return config.dataset, tft_output, files


def _shards(files, directory, sizes):
    """The records of ``files`` rewritten as GZIP shards of ``sizes`` records and one more
    with the rest, so the multi-file reader sees uneven and empty files."""
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    bounds = np.cumsum([0] + list(sizes) + [len(records) - sum(sizes)])
    paths = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        path = os.path.join(directory, f"part-{i:05d}.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for record in records[lo:hi]:
                writer.write(record)
        paths.append(path)
    return paths, len(records)


def _rows(dataset, spec):
    """Every example of ``dataset`` as a tuple of its ids and labels, in reading order."""
    names = [features.SCENARIO_ID] + list(spec.field_names)
    rows = []
    for x, y in dataset:
        columns = [x[n].numpy() for n in names] + [v.numpy()[:, 0] for v in y.values()]
        rows += list(zip(*(c.tolist() for c in columns)))
    return rows


def test_several_files_give_every_record_once_as_one_file_does(pipeline_runs, tmp_path):
    spec, tft_output, files = _transform_output(pipeline_runs)
    shards, total = _shards(files, str(tmp_path), [700, 0, 3, 1100])
    one = _rows(data.make_dataset(files, tft_output, spec, 256), spec)
    several = _rows(data.make_dataset(str(tmp_path / "part-*"), tft_output, spec, 256), spec)
    assert len(one) == len(several) == total > 2000
    assert collections.Counter(several) == collections.Counter(one)
    # Files in name order, READ_BLOCK records at a time from each file in turn.
    block = data.READ_BLOCK
    assert several[:block] == one[:block]
    assert several[block:block + 3] == one[700:703]
    assert several[block + 3:2 * block + 3] == one[703:703 + block]
    assert several[2 * block + 3:3 * block + 3] == one[1803:1803 + block]
    assert several[3 * block + 3:4 * block + 3] == one[block:2 * block]


@pytest.mark.parametrize("num_files", [1, 3])
def test_shuffled_epochs_are_seeded_permutations(pipeline_runs, tmp_path, num_files):
    spec, tft_output, files = _transform_output(pipeline_runs)
    if num_files > 1:
        files, _ = _shards(files, str(tmp_path), [900, 400])
    plain = _rows(data.make_dataset(files, tft_output, spec, 256), spec)

    def epochs(seed):
        dataset = data.make_dataset(files, tft_output, spec, 256, shuffle=True, seed=seed,
                                    num_epochs=2)
        rows = _rows(dataset, spec)
        return rows[:len(plain)], rows[len(plain):]

    first, second = epochs(seed=5)
    assert collections.Counter(first) == collections.Counter(second) == collections.Counter(plain)
    assert first != plain and second != first  # Shuffled, and anew each epoch.
    assert epochs(seed=5) == (first, second)
    assert epochs(seed=6)[0] != first


def test_scenario_weights_follow_each_examples_scenario(pipeline_runs):
    spec, tft_output, files = _transform_output(pipeline_runs)
    num_ids = int(tft_output.vocabulary_size_by_name(features.SCENARIO_VOCABULARY)) + 1
    weights = [0.5 + i for i in range(num_ids)]
    x, y, w = next(iter(data.make_dataset(files, tft_output, spec, 128,
                                          scenario_weights=weights)))
    ids = x[features.SCENARIO_ID].numpy()
    assert set(w) == set(y) == {features.label_key(t) for t in spec.task_names}
    for weight in w.values():
        assert weight.shape == (128, 1)
        np.testing.assert_allclose(weight.numpy()[:, 0], np.asarray(weights)[ids])


def test_no_matching_files_names_the_patterns(pipeline_runs, tmp_path):
    spec, tft_output, _ = _transform_output(pipeline_runs)
    pattern = str(tmp_path / "Split-train" / "*")
    with pytest.raises(ValueError, match="no transformed examples match.*Split-train"):
        data.make_dataset(pattern, tft_output, spec, 256)
