"""A stitching curve from Python (Balogh & Jelasity, ICML 2023): the front of a standard model,
a trained 1x1 conv, the back of a robust one, at every block tap; clean and robust accuracy.

    python examples/stitching_curve.py                      # cnn_small -> cnn_small_at on MNIST
    python examples/stitching_curve.py --front cnn_small_at --end cnn_small --eps 0.2

Both recipes are loaded from the store (``--train`` trains missing ones first).
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import reprlab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--front", default="cnn_small")
    parser.add_argument("--end", default="cnn_small_at")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--train-examples", type=int, default=5000)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--train", action="store_true", help="train recipes that are not stored")
    parser.add_argument("--out", default="stitching_curve.png")
    parser.add_argument("overrides", nargs="*", help="config overrides for both recipes")
    args = parser.parse_args()

    front = reprlab.load_model(args.front, args.dataset, train=args.train, overrides=args.overrides)
    end = reprlab.load_model(args.end, args.dataset, train=args.train, overrides=args.overrides)
    train = reprlab.images(args.dataset, split="train", examples=args.train_examples)
    test = reprlab.images(args.dataset, examples=args.examples, seed=1)
    curve = reprlab.stitch(
        front, end, train, test, epochs=args.epochs, eps=args.eps, attack_steps=args.attack_steps
    )
    print(f"{args.front} front -> {args.end} end, {args.dataset}:")
    print(curve.round(3).to_string(index=False))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(curve["front_tap"], curve["clean_acc"], marker="o", label="clean")
    axis.plot(curve["front_tap"], curve["robust_acc"], marker="s", label=f"PGD ε={args.eps}")
    axis.set(xlabel="stitch point (front's block tap)", ylabel="accuracy", ylim=(0, 1))
    axis.set_title(f"{args.front} → {args.end} · {args.dataset}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
