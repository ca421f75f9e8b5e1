"""CUDA paths: bf16 autocast + channels_last against fp32 on the same weights (`make test-all`)."""

from __future__ import annotations

import copy

import pytest
import torch

from reprlab.core.attacks import PGD, robust_accuracy
from reprlab.core.training_methods import TrainSettings, train_classifier
from reprlab.data import TensorLoader, dataset_info, load_tensors
from reprlab.models import build_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_bf16_channels_last_matches_fp32_on_the_same_weights() -> None:
    """Train once (bf16 + channels_last, as reprlab does on CUDA), then evaluate the same weights
    clean and under PGD in fp32/contiguous and in bf16/channels_last. Clean accuracy agrees within
    1 point; PGD accuracy within 2 (bf16 rounding changes attack trajectories, not just logits)."""
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
    attack = PGD(norm="linf", eps=0.03, step_size=0.0075, steps=10)

    fp32 = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    clean_fp32 = robust_accuracy(fp32, test, progress=False)
    robust_fp32 = robust_accuracy(
        fp32, test, attack, generator=torch.Generator(device).manual_seed(0), progress=False
    )
    fast = model.to(memory_format=torch.channels_last)
    channels_last = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in test]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        clean_bf16 = robust_accuracy(fast, channels_last, progress=False)
        robust_bf16 = robust_accuracy(
            fast,
            channels_last,
            attack,
            generator=torch.Generator(device).manual_seed(0),
            progress=False,
        )
    assert clean_fp32 > 0.8, "training on CUDA in bf16 must learn the synthetic task"
    assert abs(clean_bf16 - clean_fp32) <= 0.01
    assert abs(robust_bf16 - robust_fp32) <= 0.02
    assert robust_fp32 < clean_fp32
