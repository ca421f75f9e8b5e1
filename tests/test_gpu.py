"""CUDA paths: bf16 autocast + channels_last training and attacks (run with `make test-all`)."""

from __future__ import annotations

import pytest
import torch

from reprlab.attacks import PGD, robust_accuracy
from reprlab.data import TensorLoader, dataset_info, load_tensors
from reprlab.models import build_model
from reprlab.train import TrainSettings, train_classifier

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_mixed_precision_adversarial_training_learns_on_cuda() -> None:
    device = torch.device("cuda")
    info = dataset_info("synthetic")
    torch.manual_seed(0)
    model = build_model(
        "resnet18",
        num_classes=info.num_classes,
        in_channels=info.channels,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
    )
    train = TensorLoader(
        *load_tensors("synthetic", "unused", "train"),
        batch_size=128,
        shuffle=True,
        device=device,
        drop_last=True,
    )
    test = list(
        TensorLoader(
            *load_tensors("synthetic", "unused", "test"),
            batch_size=250,
            shuffle=False,
            device=device,
        ).epoch(0)
    )
    adversary = PGD(norm="linf", eps=0.03, step_size=0.01, steps=3, keep_best=False)
    settings = TrainSettings(
        epochs=4,
        optimizer="sgd",
        lr=0.05,
        schedule="cosine",
        adversary=adversary,
        mixed_precision=True,
        channels_last=True,
    )
    train_classifier(model, train, settings, device=device, progress=False)
    clean = robust_accuracy(model, test, progress=False)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        attacked = robust_accuracy(
            model, test, PGD(norm="linf", eps=0.03, step_size=0.0075, steps=10), progress=False
        )
    assert clean > 0.8
    assert attacked < clean
