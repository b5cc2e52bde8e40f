"""contrastive_jax.export: a ResNet in torchvision gives our encoder's outputs (eval mode, running
statistics; both stems, both block types); the npz of a ViT / text model loads back to the same
outputs, with big_vision names; a 2-step workdir exports through the command line."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from contrastive_jax import checkpoints, export, methods, train, train_step
from contrastive_jax.models import resnet

from support import REPO, image_text_config, random_like, tiny_config


def random_variables(init, seed: int = 0) -> dict:
    """`random_like` the variables that `init()` returns."""
    return random_like(jax.eval_shape(init), seed)


def resnet_variables(model, image_size: int, seed: int = 0) -> dict:
    """`random_variables` of a `resnet.ResNet` on images of `image_size`."""
    return random_variables(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)), train=False), seed)


TORCHVISION_FEATURES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "torchvision_features.py")


def torchvision_features(workdir, cases) -> list[tuple[np.ndarray, dict]]:
    """(features, {"missing", "unexpected"}) of each case (weights: a state_dict or a
    safetensors path, images NHWC, name, base_width, stem, constructor) in torchvision, run by
    tests/torchvision_features.py in a process of its own (see its docstring)."""
    jobs = []
    for index, (weights, images, name, base_width, stem, constructor) in enumerate(cases):
        prefix = os.path.join(workdir, f"torchvision_{index}")
        if isinstance(weights, dict):
            save_file({k: np.ascontiguousarray(v) for k, v in weights.items()},
                      prefix + ".safetensors")
            weights = prefix + ".safetensors"
        np.save(prefix + "_images.npy", images)
        jobs.append({"weights": str(weights), "images": prefix + "_images.npy",
                     "output": prefix + "_features.npy",
                     "stages": list(resnet.STAGE_SIZES[name]),
                     "bottleneck": name in resnet.BOTTLENECK, "base_width": base_width,
                     "stem": stem, "constructor": constructor})
    with open(os.path.join(workdir, "torchvision_jobs.json"), "w", encoding="utf-8") as f:
        json.dump(jobs, f)
    result = subprocess.run([sys.executable, TORCHVISION_FEATURES, f.name], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loads = json.loads(result.stdout.strip().splitlines()[-1])
    return [(np.load(job["output"]), load) for job, load in zip(jobs, loads)]


def assert_close_to(actual, reference, tolerance=1e-4):
    """Within `tolerance` of the reference's largest magnitude."""
    np.testing.assert_allclose(actual, reference, rtol=tolerance,
                               atol=tolerance * np.abs(reference).max())


def test_torchvision_resnets_give_our_encoder_outputs(tmp_path):
    """ResNet-18 and -50 (base width 4) with the CIFAR stem at 16x16 and the ImageNet stem at
    an odd 33x33, random weights and statistics, loaded strictly (no fc); and a full-width
    ResNet-18 in `torchvision.models.resnet18()` with the two CIFAR-stem lines, where only
    fc.weight and fc.bias are missing."""
    cases, ours = [], []
    for name in ("resnet18", "resnet50"):
        for stem, image_size in (("cifar", 16), ("imagenet", 33)):
            model = resnet.resnet(name, base_width=4, stem=stem)
            variables = resnet_variables(model, image_size)
            images = np.random.default_rng(1).uniform(
                0, 1, (3, image_size, image_size, 3)).astype(np.float32)
            ours.append(np.asarray(jax.jit(lambda v, x, model=model: model.apply(
                v, x, train=False))(variables, images)))
            state_dict = export.torchvision_state_dict(
                variables["params"], variables["batch_stats"], resnet.STAGE_SIZES[name],
                num_batches=7)
            assert "layer2.0.downsample.0.weight" in state_dict and "fc.weight" not in state_dict
            assert state_dict["bn1.num_batches_tracked"] == 7
            assert ours[-1].shape == (3, resnet.feature_dim(name, base_width=4))
            cases.append((state_dict, images, name, 4, stem, None))
    model = resnet.resnet("resnet18", stem="cifar")
    variables = resnet_variables(model, 8, seed=2)
    images = np.random.default_rng(3).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    ours.append(np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables,
                                                                                images)))
    cases.append((export.torchvision_state_dict(variables["params"], variables["batch_stats"],
                                                resnet.STAGE_SIZES["resnet18"]),
                  images, "resnet18", 64, "cifar", "resnet18"))
    results = torchvision_features(str(tmp_path), cases)
    for (theirs, load), want, case in zip(results, ours, cases):
        assert theirs.shape == want.shape
        assert_close_to(theirs, want)
        full_width = case[-1] is not None
        assert load == {"missing": ["fc.bias", "fc.weight"] if full_width else [],
                        "unexpected": []}, case[2:]


def test_vit_and_text_towers_round_trip_through_npz_with_big_vision_names(tmp_path):
    config = image_text_config("siglip", **{"model.pool": "gap"})
    method = methods.get("siglip")
    model = method.build_model(config, 10, None)
    variables = random_variables(
        lambda: method.init_variables(model, config, jax.random.PRNGKey(0)), seed=4)
    path = str(tmp_path / "towers.npz")
    export.save_npz(path, checkpoints.Restored(config, 5, model, variables))
    loaded = export.load_npz(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    images = np.random.default_rng(5).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    tokens = np.array([[1, 40, 41, 2, 0, 0], [1, 42, 2, 0, 0, 0]], np.int32)
    for embed, inputs in ((method.embed_images, images), (method.embed_texts, tokens)):
        embed = jax.jit(embed(model))
        np.testing.assert_array_equal(embed(loaded, inputs), embed(variables, inputs))

    with open(tmp_path / "towers.json", encoding="utf-8") as f:
        side = json.load(f)
    names, unmapped = side["big_vision"], side["unmapped"]
    assert side["step"] == 5 and side["config"]["model"]["variant"] == "mu/4"
    with np.load(path) as arrays:
        assert sorted([*names, *unmapped]) == sorted(arrays.files)
    assert len(set(names.values())) == len(names)
    block = "params/image_encoder/encoder/block_0"
    assert names[f"{block}/attention/query/kernel"] == (
        "img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
    assert names[f"{block}/mlp/output/bias"] == (
        "img/Transformer/encoderblock_0/MlpBlock_0/Dense_1/bias")
    assert names["params/image_encoder/encoder/final_norm/scale"] == (
        "img/Transformer/encoder_norm/scale")
    assert names["params/image_encoder/pos_embedding"] == "img/pos_embedding"
    assert names["params/text_encoder/encoder/block_0/attention_norm/bias"] == (
        "txt/Encoder_0/encoderblock_0/LayerNorm_0/bias")
    assert names["params/text_encoder/token_embedding/embedding"] == "txt/Embed_0/embedding"
    assert names["params/text_projection/kernel"] == "txt/head/kernel"
    assert "params/text_encoder/pos_embedding" in unmapped and "params/bias" in unmapped


def test_the_class_token_pool_leaves_vit_position_embeddings_unmapped():
    config = image_text_config("clip")  # pool "cls": big_vision's cls carries a posemb row.
    names = export.name_map(["params/image_encoder/pos_embedding",
                             "params/image_encoder/cls_token",
                             "params/image_encoder/encoder/blocks/block/mlp/hidden/kernel"],
                            config)
    assert set(names["unmapped"]) == {"params/image_encoder/pos_embedding",
                                      "params/image_encoder/cls_token"}
    assert names["big_vision"] == {"params/image_encoder/encoder/blocks/block/mlp/hidden/kernel":
                                   "img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"}


def test_torchvision_format_refuses_a_vit_naming_the_field(tmp_path):
    with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
        f.write(image_text_config("clip").to_json())
    with pytest.raises(ValueError, match="config.model.name is 'vit': use --format=npz"):
        export.export(str(tmp_path), "torchvision", str(tmp_path / "x.safetensors"))


@pytest.fixture(scope="module")
def checkpointed_workdir(tmp_path_factory):
    """A workdir holding one real Orbax checkpoint (step 1) of tiny_config's SimCLR ResNet-18
    (base width 4, CIFAR stem), saved by the Trainer as training saves one; the state is
    `random_like` numbers, which no initialisation has to be compiled for."""
    workdir = str(tmp_path_factory.mktemp("checkpointed"))
    trainer = train.Trainer(tiny_config(eval_every=-1), workdir)
    shapes = jax.eval_shape(lambda: train_step.create_train_state(
        trainer.method, trainer.model, trainer.config, trainer.tx, jax.random.PRNGKey(0)))
    trainer.save(trainer.layout.replicate(random_like(shapes)), 1)
    trainer.wait_for_saves()
    return workdir


def assert_exported_resnet_matches(workdir, safetensors_path, step):
    """The torchvision ResNet-18 of the export gives the restored encoder's features;
    returns the restored checkpoint and its encoder (jitted), images and features."""
    restored = checkpoints.restore(workdir)
    assert restored.step == step
    images = np.random.default_rng(6).uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
    encode = jax.jit(methods.get("simclr").encoder_features(restored.model))
    ours = np.asarray(encode(restored.variables, images))
    [(theirs, load)] = torchvision_features(os.path.dirname(str(safetensors_path)), [
        (safetensors_path, images, "resnet18", 4, "cifar", None)])
    assert load == {"missing": [], "unexpected": []}
    assert_close_to(theirs, ours)
    return restored, encode, images, ours


def test_the_command_line_exports_a_checkpoint_to_torchvision_and_npz(checkpointed_workdir,
                                                                      tmp_path, capsys):
    output = tmp_path / "encoder.safetensors"
    export.main(["export", f"--workdir={checkpointed_workdir}", "--format=torchvision",
                 f"--output={output}"])
    assert "exported step 1" in capsys.readouterr().out
    _, encode, images, ours = assert_exported_resnet_matches(checkpointed_workdir, output, 1)
    npz = str(tmp_path / "model.npz")
    export.main(["export", f"--workdir={checkpointed_workdir}", "--format=npz",
                 f"--output={npz}"])
    np.testing.assert_array_equal(encode(export.load_npz(npz), images), ours)


def test_a_bad_command_line_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["export", f"--workdir={tmp_path}", "--format=onnx", "--output=x"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "error: flag --format=onnx: value should be one of <torchvision|npz>")


@pytest.mark.slow
def test_a_workdir_trained_two_steps_exports_through_python_m(tmp_path):
    """End to end: train.train_and_evaluate, then `python -m contrastive_jax.export`
    (opt-in: the two compilations of the training run take about half a minute)."""
    workdir = str(tmp_path / "trained")
    train.train_and_evaluate(tiny_config(total_steps=2, eval_every=-1), workdir)
    output = tmp_path / "encoder.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "contrastive_jax.export", f"--workdir={workdir}",
         "--format=torchvision", f"--output={output}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "exported step 2" in result.stdout
    restored, *_ = assert_exported_resnet_matches(workdir, output, 2)
    stats = restored.variables["batch_stats"]["encoder"]["stem_bn"]
    assert np.abs(stats["mean"]).max() > 0  # Trained: the running statistics moved from 0.


def test_a_workdir_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(checkpoints.NoCheckpointError, match="is not a training workdir"):
        export.export(str(tmp_path), "npz", str(tmp_path / "x.npz"))
    with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
        f.write(tiny_config().to_json())
    with pytest.raises(checkpoints.NoCheckpointError, match="no checkpoint in"):
        export.export(str(tmp_path), "npz", str(tmp_path / "x.npz"))


def test_an_export_on_a_full_disk_keeps_the_old_file_whole(checkpointed_workdir, tmp_path):
    """The second export of model.npz runs with files over 4 kB failing to write (EFBIG, as on
    a full disk): one error line, the first export still loads, no temporary file is left."""
    npz = tmp_path / "model.npz"
    export.main(["export", f"--workdir={checkpointed_workdir}", "--format=npz",
                 f"--output={npz}"])
    before = npz.read_bytes()
    limit = "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))"
    program = (f"import resource, signal, sys\n{limit}\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill\n"
               "from contrastive_jax import export\n"
               f"export.main(['export', '--workdir={checkpointed_workdir}', '--format=npz', "
               f"'--output={npz}'])\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == f"error: cannot write {npz}: File too large"
    assert npz.read_bytes() == before
    np.load(npz)  # Whole: no BadZipFile.
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.npz"]


def test_torchvision_format_without_safetensors_is_one_error_line(tmp_path):
    program = ("import sys\nsys.modules['safetensors'] = None  # import raises ImportError\n"
               "from contrastive_jax import export\n"
               f"export.main(['export', '--workdir={tmp_path}', '--format=torchvision', "
               f"'--output={tmp_path / 'x.safetensors'}'])\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --format=torchvision writes safetensors, which is not installed: "
        "pip install -e '.[export]'")
