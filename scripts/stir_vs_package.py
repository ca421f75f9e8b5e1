"""STIR of the demo CNNs computed by the authors' package (``stir-invariance``), on the CPU, to
compare with ``reprlab run experiment=stir_demo analysis.models=null model=cnn_small
ref=cnn_small_at analysis.examples=100 analysis.repeats=3`` (docs/findings.md).

Usage (the package is not a dependency; install it beside, without its CUDA torch):
    pip install --no-deps --target /tmp/stirpkg stir-invariance scikit-learn threadpoolctl dill \
        seaborn matplotlib-venn narwhals
    PYTHONPATH=/tmp/stirpkg python scripts/stir_vs_package.py outputs/store

Only an adapter is written here: the package's model interface (``model(x, with_latent,
fake_relu, ...) -> (logits, latent)``) over reprlab's models at ``fc1``, and the package's
hard-coded ``cuda:N`` moves sent to the CPU. The search is the package's own ``_stir`` with its
default loss (relative L2 distance of representations), 300 steps of 0.5, keep best, N(0, 1)
seeds, on the 100 training images reprlab's run uses (seed 0).
"""

import sys

import torch

_to = torch.Tensor.to


def _cpu_to(self, *args, **kwargs):
    args = tuple(
        "cpu"
        if (isinstance(a, str) and a.startswith("cuda"))
        or (isinstance(a, torch.device) and a.type == "cuda")
        else a
        for a in args
    )
    return _to(self, *args, **kwargs)


torch.Tensor.to = _cpu_to  # the package moves tensors to f"cuda:{devices[0]}"


def refuse(message: str) -> None:
    print(f"stir_vs_package: {message}", file=sys.stderr)
    sys.exit(2)


if len(sys.argv) != 2:
    refuse("usage: python scripts/stir_vs_package.py STORE (the store holding the demo CNNs)")
try:
    import stir.helper as hp
    from stir.attack.attacker import AttackerModel
    from stir.attack.losses import LPNormLossSingleModel
    from stir.stir import _stir
except ImportError as err:
    refuse(
        f"the authors' package does not import ({err}); install it as this file's docstring "
        "says and put it on PYTHONPATH"
    )

import reprlab  # noqa: E402
from reprlab.core.representation import Representation  # noqa: E402

TAP = "fc1"


class Adapter(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.fake = Representation(model, TAP, fake_relu=True)
        self.plain = Representation(model, TAP, fake_relu=False)

    def forward(
        self,
        x,
        with_latent=False,
        fake_relu=False,
        no_relu=False,
        layer_num=None,
        return_possible_layers=False,
    ):
        logits = self.model(x)
        if not with_latent:
            return logits
        return logits, (self.fake if fake_relu else self.plain)(x)


store = sys.argv[1]
try:
    a = reprlab.load_model("cnn_small", store=store, device="cpu")
    b = reprlab.load_model("cnn_small_at", store=store, device="cpu")
    x, y = reprlab.images("mnist", split="train", examples=100, seed=0)
except reprlab.ReprlabError as err:
    refuse(str(err))
ident = torch.nn.Identity()
# "m2|m1": IRIs of m1 (cnn_small), CKA on m2 (cnn_small_at): STIR(cnn_small_at | cnn_small).
results = {"m2|m1": [], "m1|m2": []}
for repeat in range(3):
    for key, (m1, m2) in {"m2|m1": (a, b), "m1|m2": (b, a)}.items():
        torch.manual_seed(repeat)
        kwargs = {
            "custom_loss": LPNormLossSingleModel(hp.DummyArgs(("lpnorm_type", 2.0, float))),
            "constraint": "unconstrained",
            "eps": 1000,
            "step_size": 0.5,
            "iterations": 300,
            "targeted": True,
            "do_tqdm": False,
            "should_normalize": True,
            "use_best": True,
        }
        value, _ = _stir(
            AttackerModel(Adapter(m1), ident),
            AttackerModel(Adapter(m2), ident),
            [(x, y)],
            len(x),
            [0],
            kwargs,
            2.0,
            "super-noise",
            False,
        )
        results[key].append(float(value))
        print(repeat, key, float(value), flush=True)
for key, values in results.items():
    t = torch.tensor(values)
    print(f"package STIR({key}): mean {t.mean():.4f} min {t.min():.4f} max {t.max():.4f}")
