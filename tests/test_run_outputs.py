"""What a training run writes besides checkpoints, read back: TensorBoard events (clu's writers)
that agree with metrics.jsonl, the config as hyperparameters, the parameter table in the log, a
profiler trace; and the evaluations that `config.eval.evaluators` chooses."""

import dataclasses
import glob
import json
import logging
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from contrastive_jax import methods, parallel, train
from contrastive_jax.data import sources as data_sources, input_pipeline
from contrastive_jax.evaluation import evaluators
from contrastive_jax.logging import MetricWriter, read_metrics
from contrastive_jax.parallel.layout import Layout

from support import final_params, tiny_config


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step run that evaluates kNN only and traces steps 2 and 3: (workdir, log messages)."""
    workdir = str(tmp_path_factory.mktemp("run"))
    records, absl_logger = _Records(), logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.INFO)
    absl_logger.addHandler(records)
    try:
        train.train_and_evaluate(tiny_config(**{"eval.evaluators": ("knn",), "profile_steps": 2,
                                                "checkpoint_every": 4}), workdir)
    finally:
        absl_logger.removeHandler(records)
        absl_logger.setLevel(level)
    return workdir, records.messages


def tensorboard_events(workdir):
    """{tag: {step: value}} of the scalars, and the hparams plugin's summaries, in DIR's events."""
    scalars, hparams = {}, []
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "scalars":
                    scalars.setdefault(value.tag, {})[event.step] = float(
                        tf.make_ndarray(value.tensor))
                elif plugin == "hparams":
                    hparams.append(plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content))
    return scalars, hparams


def test_tensorboard_scalars_equal_the_metrics_jsonl_rows(run):
    workdir, _ = run
    scalars, _ = tensorboard_events(workdir)
    rows = read_metrics(workdir)
    for key in ("loss", "learning_rate", "examples_per_sec", "contrastive_top1", "knn_top1"):
        logged = {row["step"]: row[key] for row in rows if key in row}
        assert logged, key
        assert sorted(scalars[key]) == sorted(logged), key
        np.testing.assert_allclose([scalars[key][s] for s in sorted(logged)],
                                   [logged[s] for s in sorted(logged)], rtol=1e-6)
    assert sorted(scalars["loss"]) == [1, 2, 3, 4]
    assert 4 in scalars["steps_per_sec"]  # clu's ReportProgress, at the last step.


def test_metrics_jsonl_keeps_its_form(run):
    workdir, _ = run
    rows = read_metrics(workdir)
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4]
    assert all(isinstance(row["step"], int) for row in rows)
    assert not any("steps_per_sec" in row or "uptime" in row for row in rows)


def test_the_config_is_written_as_hyperparameters(run):
    workdir, _ = run
    _, hparams = tensorboard_events(workdir)
    started = [data.session_start_info.hparams for data in hparams
               if data.HasField("session_start_info")]
    assert started
    assert started[0]["batch_size"].number_value == 16
    assert started[0]["model.name"].string_value == "resnet18"
    assert started[0]["eval.evaluators"].string_value == "('knn',)"


def test_the_parameter_table_is_in_the_log(run):
    workdir, messages = run
    _, params = final_params(workdir)
    count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))
    table = "\n".join(message for message in messages if "Parameters of simclr" in message)
    assert f"Total: {count:,} " in table
    assert "encoder/" in table


def test_a_profile_trace_is_written_to_the_workdir(run):
    workdir, _ = run
    traces = glob.glob(os.path.join(workdir, "plugins", "profile", "*", "*.xplane.pb"))
    assert traces and all(os.path.getsize(path) > 0 for path in traces)


def test_evaluators_run_only_those_the_config_lists(run):
    workdir, _ = run
    evaluated = [row for row in read_metrics(workdir) if "knn_top1" in row]
    assert [row["step"] for row in evaluated] == [4]
    assert 0.0 <= evaluated[0]["knn_top1"] <= 1.0
    assert not any("linear_top1" in row for row in read_metrics(workdir))


@pytest.mark.parametrize("override,message", [
    ({"eval.evaluators": ("knn", "knn_top5")},
     "config.eval.evaluators: unknown evaluator 'knn_top5'; choose from"),
    ({"eval.evaluators": ("retrieval",)},
     "config.eval.evaluators: 'retrieval' cannot run: method 'simclr' has no text tower"),
    ({"eval.evaluators": ("linear_eval",), "eval_every": -1},
     "config.eval.evaluators: unknown evaluator 'linear_eval'"),
    ({"profile_steps": -1}, "config.profile_steps must be >= 0"),
])
def test_evaluators_that_cannot_run_are_refused_before_training(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train.Trainer(tiny_config(**override), str(tmp_path / "run"))


def _pixels(model):
    """An encoder_features whose features are the images' pixels: no model to compile."""
    del model
    return lambda variables, images: images.reshape(images.shape[0], -1)


def test_knn_and_linear_share_one_extraction_per_split(monkeypatch):
    """In one round, kNN and the linear probe read each split once and report what each
    reports when run alone."""
    config = tiny_config()
    method = dataclasses.replace(methods.get("simclr"), encoder_features=_pixels)
    chosen = evaluators.names(config, method, data_sources.dataset_info(config.data))
    assert chosen == ("knn", "linear")
    built = evaluators.build(chosen, config, method, None,
                             data_sources.dataset_info(config.data),
                             Layout("shard_map", parallel.make_mesh()))
    alone = {**built["knn"].run({}), **built["linear"].run({})}
    splits = []
    eval_iterator = input_pipeline.eval_iterator

    def recording(data_config, split, **kwargs):
        splits.append(split)
        return eval_iterator(data_config, split, **kwargs)

    monkeypatch.setattr(input_pipeline, "eval_iterator", recording)
    together = evaluators.run_all(built, {})
    assert sorted(splits) == ["test", "train"]
    assert together == pytest.approx(alone)


def test_rows_of_a_run_that_saved_no_checkpoint_are_set_aside(tmp_path):
    """A rerun from step 0 in a workdir whose metrics.jsonl has rows (a run killed before its
    first checkpoint) keeps them in metrics.before_restart.jsonl, and starts a new file."""
    for attempt in range(2):
        writer = MetricWriter(str(tmp_path), start_step=0)
        writer.write(0, {"knn_top1": 0.1 + attempt})
        writer.write(5, {"loss": 2.0 + attempt})
        writer.close()
    MetricWriter(str(tmp_path), start_step=0).close()
    read = lambda name: [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    assert read("metrics.before_restart.jsonl") == [{"step": 0, "knn_top1": 0.1},
                                                    {"step": 5, "loss": 2.0}]
    assert read("metrics.before_restart_2.jsonl") == [{"step": 0, "knn_top1": 1.1},
                                                      {"step": 5, "loss": 3.0}]
    assert not (tmp_path / "metrics.jsonl").exists()
