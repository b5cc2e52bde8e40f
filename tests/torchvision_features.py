"""Features of exported weights in torchvision's ResNets, in a process of its own.

    python tests/torchvision_features.py JOBS.json

runs each job of JOBS.json: {"weights": FILE.safetensors, "images": FILE.npy (NHWC),
"output": FILE.npy, "stages": [2, 2, 2, 2], "bottleneck": bool, "base_width": int, "stem":
"cifar" | "imagenet", "constructor": "resnet18" or null}, loading the weights into torchvision's
model (`constructor`, else its ResNet class built `base_width / 64` as wide) and saving the
eval-mode features; prints {"missing": [...], "unexpected": [...]} of each load as one JSON list.
torch is imported only here: beside jax and TensorFlow in pytest's process, its CUDA build's
import crashes.
"""

import json
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from torchvision import models
from torchvision.models import resnet as tv


def build(job: dict) -> torch.nn.Module:
    """torchvision's ResNet with the export's CIFAR-stem lines; a constructor's keeps its fc
    until after the load, so the load reports fc's weights missing."""
    width = job["base_width"]
    if job["constructor"]:
        model = getattr(models, job["constructor"])()
    else:
        block = tv.Bottleneck if job["bottleneck"] else tv.BasicBlock
        model = tv.ResNet(block, job["stages"])
        model.inplanes = width
        model.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
        model.bn1 = torch.nn.BatchNorm2d(width)
        for stage, count in enumerate(job["stages"]):
            setattr(model, f"layer{stage + 1}", model._make_layer(
                block, width * 2**stage, count, stride=1 if stage == 0 else 2))
        model.fc = torch.nn.Identity()  # Before the load: nothing may be missing.
    if job["stem"] == "cifar":
        model.conv1 = torch.nn.Conv2d(3, width, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    return model


def run(job: dict) -> dict:
    model = build(job)
    result = model.load_state_dict(load_file(job["weights"]), strict=False)
    model.fc = torch.nn.Identity()
    images = np.load(job["images"]).transpose(0, 3, 1, 2).copy()
    with torch.no_grad():
        np.save(job["output"], model.eval()(torch.from_numpy(images)).numpy())
    return {"missing": sorted(result.missing_keys), "unexpected": sorted(result.unexpected_keys)}


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        print(json.dumps([run(job) for job in json.load(f)]))
