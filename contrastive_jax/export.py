"""Exports a trained model: a ResNet encoder to torchvision, any model to a flat npz.

    python -m contrastive_jax.export --workdir=DIR --format=torchvision|npz --output=FILE

restores the newest checkpoint of DIR with the config the run saved in DIR/config.json
(`checkpoints.restore`: no data is read, nothing in DIR is written) and writes

- `torchvision`: the ResNet encoder as a torchvision `state_dict` in safetensors (`conv1.weight`,
  `bn1.running_mean`, `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight` ...): conv
  kernels HWIO -> OIHW, BatchNorm scale / bias / mean / var -> weight / bias / running_mean /
  running_var, `num_batches_tracked` = the checkpoint's step. The encoder ends at the pooled
  features, so there is no `fc`: load with `model.fc = torch.nn.Identity()` (or
  `strict=False`). BatchNorm epsilon (1e-5) and padding are torchvision's: the 7x7 stem, the
  3x3 convolutions and the max-pool pad 3 / 1 / 1 pixels on every side as torch does (not
  flax's "SAME", which pads (0, 1) at stride 2 on even sizes), and the 1x1 shortcuts pad none,
  so in eval mode the outputs agree to float32 rounding (tested). A CIFAR-stem encoder needs
  `model.conv1 = Conv2d(3, 64 * width, 3, 1, 1, bias=False)` and `model.maxpool = Identity()`;
  width 1 with base width 64 is `torchvision.models.resnet18()` / `resnet50()` itself, other
  widths (SimCLR's 2x, 4x) are torchvision's ResNet class with every stage that much wider.
- `npz`: every variable of the model (both towers, projections and scale of CLIP / SigLIP; the
  encoder, projection head and probe of SimCLR ...) under its flax path joined with "/", such as
  `params/image_encoder/encoder/block_0/attention/query/kernel`; `load_npz` restores the tree.
  Beside it, FILE minus `.npz` plus `.json` holds the step, the config and `big_vision`: our
  names -> big_vision's two-tower names (`img/Transformer/encoderblock_0/...`, `txt/...`) for
  every parameter whose value carries over unchanged, and `unmapped`: the others, with why.
  The map renames; it does not make the computations equal (our text tower masks padding and
  pools at the last real token, our ViT adds a position embedding to the class token).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Sequence

import ml_collections
import numpy as np
from absl import flags
from flax import traverse_util

from contrastive_jax import checkpoints, cli, files
from contrastive_jax.models import resnet

FORMATS = ("torchvision", "npz")
SEPARATOR = "/"


# -- torchvision ---------------------------------------------------------------------------------


def check_resnet(config: ml_collections.ConfigDict) -> None:
    """Refuses, naming config.model.name, a model whose image encoder is not a ResNet."""
    if config.model.name not in resnet.STAGE_SIZES:
        raise ValueError(f"--format=torchvision exports ResNet encoders; config.model.name is "
                         f"{config.model.name!r}: use --format=npz")


def resnet_subtree(params: dict) -> str:
    """The name of the ResNet encoder among the model's parameters: `encoder`, or a CLIP's
    `image_encoder`."""
    for name, subtree in params.items():
        if isinstance(subtree, dict) and "stem_conv" in subtree:
            return name
    raise ValueError(f"no ResNet encoder among the parameters {sorted(params)}")


def torch_block_names(stage_sizes: Sequence[int]) -> list[str]:
    """torchvision's name of each residual block in order: layer1.0, layer1.1, ..., layer4.N."""
    return [f"layer{stage + 1}.{index}" for stage, count in enumerate(stage_sizes)
            for index in range(count)]


def _conv(kernel: np.ndarray) -> np.ndarray:
    """A flax kernel [H, W, in, out] as torch's weight [out, in, H, W]."""
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def _batch_norm(params: dict, stats: dict, num_batches: int) -> dict[str, np.ndarray]:
    """torch's BatchNorm2d fields; both use epsilon 1e-5, so none is rescaled."""
    return {"weight": params["scale"], "bias": params["bias"], "running_mean": stats["mean"],
            "running_var": stats["var"], "num_batches_tracked": np.asarray(num_batches, np.int64)}


def _torch_module_name(flax_name: str) -> str:
    """conv1 / bn1 ... for a block's Conv_0 / BatchNorm_0 ...; downsample.0 / .1 for its
    projection shortcut."""
    if flax_name == "shortcut_conv":
        return "downsample.0"
    if flax_name == "shortcut_bn":
        return "downsample.1"
    kind, index = flax_name.rsplit("_", 1)
    return {"Conv": "conv", "BatchNorm": "bn"}[kind] + str(int(index) + 1)


def _module_tensors(prefix: str, name: str, params: dict, stats: dict,
                    num_batches: int) -> dict[str, np.ndarray]:
    """The torch tensors of one flax Conv (a kernel) or BatchNorm, named `prefix` + field."""
    if "kernel" in params[name]:
        tensors = {"weight": _conv(params[name]["kernel"])}
    else:
        tensors = _batch_norm(params[name], stats[name], num_batches)
    return {f"{prefix}{key}": np.asarray(value) for key, value in tensors.items()}


def torchvision_state_dict(params: dict, batch_stats: dict, stage_sizes: Sequence[int], *,
                           num_batches: int = 0) -> dict[str, np.ndarray]:
    """A `resnet.ResNet`'s parameters and BatchNorm statistics (without a classifier head) as
    the `state_dict` of torchvision's ResNet of these `stage_sizes`, less `fc`."""
    tensors = {**_module_tensors("conv1.", "stem_conv", params, batch_stats, num_batches),
               **_module_tensors("bn1.", "stem_bn", params, batch_stats, num_batches)}
    blocks = sorted((name for name in params if re.fullmatch(r"\w+Block_\d+", name)),
                    key=lambda name: int(name.rsplit("_", 1)[1]))
    for flax_block, torch_block in zip(blocks, torch_block_names(stage_sizes), strict=True):
        for name in params[flax_block]:
            prefix = f"{torch_block}.{_torch_module_name(name)}."
            tensors.update(_module_tensors(prefix, name, params[flax_block],
                                           batch_stats[flax_block], num_batches))
    return tensors


def save_torchvision(path: str, restored: checkpoints.Restored) -> dict[str, np.ndarray]:
    """Writes the ResNet encoder of `restored` as a torchvision state_dict in safetensors;
    returns the tensors written."""
    from safetensors.numpy import save

    config = restored.config
    check_resnet(config)
    subtree = resnet_subtree(restored.variables["params"])
    tensors = torchvision_state_dict(
        restored.variables["params"][subtree], restored.variables["batch_stats"][subtree],
        resnet.STAGE_SIZES[config.model.name], num_batches=restored.step)
    metadata = {"format": "pt", "arch": config.model.name, "stem": config.model.stem,
                "width": str(config.model.width),
                "base_width": str(config.model.base_width),
                "step": str(restored.step)}
    with files.atomic_write(path, "wb") as f:
        f.write(save(tensors, metadata=metadata))
    return tensors


# -- npz -----------------------------------------------------------------------------------------


def flatten(variables: dict) -> dict[str, np.ndarray]:
    """{"params/encoder/stem_conv/kernel": array, ...}: every leaf under its path (an empty
    collection, such as a ViT's batch_stats, has none and is not kept)."""
    return {name: np.asarray(value) for name, value in
            traverse_util.flatten_dict(variables, sep=SEPARATOR).items()}


def unflatten(arrays: dict[str, np.ndarray]) -> dict:
    """The nested variables that `flatten` flattened."""
    return traverse_util.unflatten_dict(dict(arrays), sep=SEPARATOR)


def load_npz(path: str) -> dict:
    """The variables saved by `save_npz`, ready for `model.apply`."""
    with np.load(path) as arrays:
        return unflatten({name: arrays[name] for name in arrays.files})


def side_file(path: str) -> str:
    """Where the names and config of an npz export go: FILE minus .npz, plus .json."""
    return (path[:-len(".npz")] if path.endswith(".npz") else path) + ".json"


# Our transformer names -> big_vision's (models/vit.py, proj/image_text/two_towers.py).
_BLOCK_PARTS = {"attention_norm": "LayerNorm_0", "attention": "MultiHeadDotProductAttention_0",
                "mlp_norm": "LayerNorm_1", "mlp/hidden": "MlpBlock_0/Dense_0",
                "mlp/output": "MlpBlock_0/Dense_1"}
_EMBEDDINGS = {"patch_embedding/kernel": "embedding/kernel",
               "patch_embedding/bias": "embedding/bias",
               "token_embedding/embedding": "Embed_0/embedding"}
_PROJECTIONS = {"image_projection": "img/head/kernel", "text_projection": "txt/head/kernel"}
_NO_COUNTERPART = "no big_vision counterpart"


def _tower(tower: str, config: ml_collections.ConfigDict) -> tuple[str, str] | None:
    """(big_vision's prefix, its encoder's name) for one of our transformer towers."""
    if tower == "text_encoder":
        return "txt/", "Encoder_0"
    if config.model.name == "vit" and tower in ("image_encoder", "encoder"):
        return ("img/" if tower == "image_encoder" else ""), "Transformer"
    return None


def _encoder_name(rest: str) -> str | None:
    """big_vision's name inside an Encoder for ours (`block_3/mlp/hidden/kernel`, or
    `blocks/block/...` under scan_layers)."""
    if rest.startswith("final_norm/"):
        return "encoder_norm/" + rest[len("final_norm/"):]
    match = re.fullmatch(r"(?:block_(\d+)|blocks/block)/(.+)", rest)
    if not match:
        return None
    block = f"encoderblock_{match.group(1)}" if match.group(1) else "encoderblock"
    for ours, theirs in _BLOCK_PARTS.items():
        if match.group(2).startswith(ours + "/"):
            return f"{block}/{theirs}/{match.group(2)[len(ours) + 1:]}"
    return None


def _tower_name(rest: str, encoder: str, pool: str) -> tuple[str | None, str]:
    """big_vision's name within a tower for ours, or (None, why not)."""
    if rest in _EMBEDDINGS:
        return _EMBEDDINGS[rest], ""
    if rest == "pos_embedding" and encoder == "Transformer" and pool == "gap":
        return "pos_embedding", ""
    if rest in ("pos_embedding", "cls_token") and encoder == "Transformer":
        return None, ("big_vision adds no position embedding to the class token: its 'cls' is "
                      "ours + pos_embedding[:, :1], its pos_embedding ours[:, 1:]")
    if rest == "pos_embedding":
        return None, "big_vision's text pos_embedding is [1, L, D]: add an axis"
    if rest.startswith("encoder/") and (inner := _encoder_name(rest[len("encoder/"):])):
        return f"{encoder}/{inner}", ""
    return None, _NO_COUNTERPART


def big_vision_name(name: str, config: ml_collections.ConfigDict) -> tuple[str | None, str]:
    """(big_vision's name, "") for one of our flat names whose value carries over unchanged
    to big_vision's ViT or two-tower model, else (None, why not)."""
    path = name.split(SEPARATOR)
    if path[0] != "params" or len(path) < 2:
        return None, _NO_COUNTERPART
    tower, rest = path[1], SEPARATOR.join(path[2:])
    if tower in _PROJECTIONS:
        return _PROJECTIONS[tower], ""
    if tower in ("log_scale", "bias"):
        return None, "big_vision's 't' and 'b' have shape (1,): add an axis"
    place = _tower(tower, config)
    if place is None:
        return None, _NO_COUNTERPART
    prefix, encoder = place
    theirs, why = _tower_name(rest, encoder, config.model.get("pool", "cls"))
    return (prefix + theirs if theirs else None), why


def name_map(names: Sequence[str], config: ml_collections.ConfigDict) -> dict[str, dict]:
    """{"big_vision": {ours: theirs}, "unmapped": {ours: why}} for the flat `names`."""
    mapped, unmapped = {}, {}
    for name in names:
        theirs, why = big_vision_name(name, config)
        if theirs is None:
            unmapped[name] = why
        else:
            mapped[name] = theirs
    return {"big_vision": mapped, "unmapped": unmapped}


def save_npz(path: str, restored: checkpoints.Restored) -> dict[str, np.ndarray]:
    """Writes every variable of `restored` to `path` and the names, step and config beside it
    (`side_file`); returns the arrays written."""
    arrays = flatten(restored.variables)
    with files.atomic_write(path, "wb") as f:  # np.savez would add .npz to a bare name.
        np.savez(f, **arrays)
    names = {"step": restored.step, **name_map(list(arrays), restored.config),
             "config": restored.config.to_dict()}
    with files.atomic_write(side_file(path)) as f:
        json.dump(names, f, indent=2)
    return arrays


# -- the command line ----------------------------------------------------------------------------


def export(workdir: str, export_format: str, output: str) -> checkpoints.Restored:
    """Restores `workdir`'s newest checkpoint and writes it to `output` in `export_format`."""
    if export_format not in FORMATS:
        raise ValueError(f"unknown --format {export_format!r}; choose one of {FORMATS}")
    if export_format == "torchvision":  # Before the restore, which takes a while.
        try:
            import safetensors.numpy  # noqa: F401
        except ImportError as error:
            raise ValueError("--format=torchvision writes safetensors, which is not installed: "
                             "pip install -e '.[export]'") from error
        check_resnet(checkpoints.load_config(workdir))
    restored = checkpoints.restore(workdir)
    (save_torchvision if export_format == "torchvision" else save_npz)(output, restored)
    return restored


def parse_flags(argv: Sequence[str]) -> flags.FlagValues:
    """The command line's flags, in their own FlagValues so that importing this module (in
    tests, beside `contrastive_jax.main`) defines no global flags."""
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Training workdir whose newest checkpoint to export.",
                        flag_values=values)
    flags.DEFINE_enum("format", None, FORMATS, "torchvision (safetensors) or npz.",
                      flag_values=values)
    flags.DEFINE_string("output", None, "File to write.", flag_values=values)
    flags.mark_flags_as_required(["workdir", "format", "output"], flag_values=values)
    cli.parse_absl_flags(argv, values)
    return values


def main(argv: Sequence[str]) -> None:
    """Exports, printing one line; bad input ends with one `error:` line and status 1."""
    with cli.errors_as_one_line():
        values = parse_flags(argv)
        restored = export(values.workdir, values.format, values.output)
    print(f"exported step {restored.step} of {values.workdir} to {values.output} "
          f"({values.format})", flush=True)


if __name__ == "__main__":
    main(sys.argv)
