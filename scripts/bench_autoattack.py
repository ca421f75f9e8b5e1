"""AutoAttack checks on a stored model: reprlab's run vs the package called directly, and PGD-20.

Loads a trained recipe from a store, draws the same seeded test sample that ``analysis=evaluate``
uses, and reports (one line each) clean accuracy, PGD-20 (reprlab's default evaluation PGD), and
the chosen attack run (a) through reprlab (:class:`reprlab.core.autoattack.AutoAttack`) and (b) with
``pyautoattack`` called directly on the same model, images, seed and batch size, with seconds.
Optionally torchattacks' AutoAttack on the same images (``--torchattacks``).

    python scripts/bench_autoattack.py --store outputs/store --model cnn_small_at --eps 0.2
    python scripts/bench_autoattack.py --store outputs/store --model cnn_small --eps 0.1 \
        --version custom --attacks apgd-ce
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from reprlab.core.attacks import correct_under
from reprlab.core.autoattack import AutoAttack
from reprlab.data import dataset_info, default_data_root, make_loader
from reprlab.io.store import ArtifactStore
from reprlab.run.config import AttackSpec, ModelRecipe, typed
from reprlab.run.recipes import build_for, make_attack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--model", required=True, help="recipe name of a stored model")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data", default=str(default_data_root()))
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--version", default="standard")
    parser.add_argument("--attacks", nargs="*", default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["reprlab", "direct", "pgd"])
    parser.add_argument("--torchattacks", action="store_true")
    args = parser.parse_args()

    store = ArtifactStore(args.store)
    (key,) = [k for k in store.resolve(args.model) if store.get(k) is not None][:1]
    entry = store.get(key)
    recipe = typed(entry.meta["recipe"], ModelRecipe, "model")
    info = dataset_info(args.dataset)
    model = build_for(recipe, info)
    model.load_state_dict(entry.load())
    model.eval()
    loader = make_loader(args.dataset, args.data, "test", batch_size=args.batch_size,
                         train=False, seed=args.seed, limit=args.examples)  # fmt: skip
    batches = list(loader.epoch(0))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    threads = torch.get_num_threads()
    load = os.getloadavg()[0]
    print(f"{args.model} ({key}) on {len(y)} {args.dataset} test images, ε={args.eps}, "
          f"{threads} threads, load {load:.1f}")  # fmt: skip

    clean = correct_under(model, batches, None, progress=False).float().mean().item()
    print(f"clean                      {100 * clean:6.2f}%")
    if "pgd" not in args.skip:
        pgd = make_attack(AttackSpec(norm="linf", eps=args.eps, step_size=None, steps=20,
                                     random_start=True, restarts=1, targeted=False, keep_best=True,
                                     model_mode="eval", clean_first=True))  # fmt: skip
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(args.seed)
        acc = correct_under(model, batches, pgd, generator=generator, progress=False)
        print(f"PGD-20 (reprlab default)   {100 * acc.float().mean():6.2f}%   "
              f"{time.perf_counter() - started:7.1f} s")  # fmt: skip

    attacks = tuple(args.attacks) if args.attacks else None
    ours = AutoAttack(eps=args.eps, version=args.version, attacks=attacks, seed=args.seed,
                      batch_size=args.batch_size, target_classes=min(9, info.num_classes - 1),
                      apgd_restarts=1 if args.version == "custom" else None)  # fmt: skip
    if "reprlab" not in args.skip:
        started = time.perf_counter()
        result = ours.run(model, x, y, progress=True)
        seconds = time.perf_counter() - started
        stages = ", ".join(f"{k} {100 * v:.2f}%" for k, v in result.stages.items())
        times = ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items())
        print(f"{ours.describe():26s} {100 * result.correct.float().mean():6.2f}%   "
              f"{seconds:7.1f} s   (reprlab; stages: {stages}; "
              f"seconds: {times})")  # fmt: skip
    if "direct" not in args.skip:
        import pyautoattack

        direct = pyautoattack.AutoAttack(model, norm="Linf", eps=args.eps, seed=args.seed,
                                         version=args.version, attacks=list(attacks) if attacks
                                         else None, device="cpu")  # fmt: skip
        if args.version == "custom":
            direct.apgd.n_restarts = 1
        started = time.perf_counter()
        _, y_adv = direct.run_standard_evaluation(x, y, batch_size=args.batch_size)
        print(f"{ours.describe():26s} {100 * (y_adv == y).float().mean():6.2f}%   "
              f"{time.perf_counter() - started:7.1f} s   (pyautoattack directly)")  # fmt: skip
    if args.torchattacks:
        import torchattacks

        theirs = torchattacks.AutoAttack(model, norm="Linf", eps=args.eps, version="standard",
                                         n_classes=info.num_classes, seed=args.seed)  # fmt: skip
        started = time.perf_counter()
        correct = []
        for xb, yb in batches:
            x_adv = theirs(xb, yb)
            with torch.no_grad():
                correct.append(model(x_adv).argmax(1) == yb)
        print(f"torchattacks AutoAttack    {100 * torch.cat(correct).float().mean():6.2f}%   "
              f"{time.perf_counter() - started:7.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
