"""Command line of the library: ``python -m npfl_lib demo`` (or ``npfl-lib demo``).

The demo trains an MLP with the lecture's "good defaults" (dropout, AdamW without weight
decay on biases, label smoothing), all built from npfl_lib's own pieces, on MNIST when
it is cached on disk and on scikit-learn's bundled 8x8 digits otherwise. It prints the
dev and test accuracy and saves the training curves as a PNG.
"""

from __future__ import annotations

import argparse
import sys

# Hyperparameters per data set; digits is small, so it gets more epochs and smaller batches.
PRESETS = {
    "digits": {
        "hidden_layers": [256],
        "dropout": 0.3,
        "lr": 3e-3,
        "weight_decay": 0.05,
        "label_smoothing": 0.1,
        "epochs": 30,
        "batch_size": 32,
    },
    "mnist": {
        "hidden_layers": [400],
        "dropout": 0.5,
        "lr": 1e-3,
        "weight_decay": 0.1,
        "label_smoothing": 0.1,
        "epochs": 10,
        "batch_size": 50,
    },
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``npfl-lib`` argument parser (one subcommand: ``demo``)."""
    parser = argparse.ArgumentParser(
        prog="npfl-lib", description="The library of the course 'Training Neural Networks II'."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train an MLP with the lecture's good defaults and plot its training curves",
        description=__doc__.split("\n\n", 1)[1],
    )
    demo.add_argument(
        "--dataset",
        choices=["auto", "digits", "mnist"],
        default="auto",
        help="auto: MNIST when cached on disk, else digits (default: %(default)s)",
    )
    demo.add_argument("--epochs", type=_positive_int, help="default: 30 on digits, 10 on MNIST")
    demo.add_argument("--batch-size", type=_positive_int, help="default: 32 on digits, 50 on MNIST")
    demo.add_argument(
        "--output",
        default="npfl_demo.png",
        help="PNG file for the training curves, '' for none (default: %(default)s)",
    )
    demo.add_argument(
        "--device",
        default="auto",
        help="auto (NPFL_DEVICE, else CUDA when available, else cpu), cpu, cuda, cuda:N",
    )
    demo.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    demo.add_argument("--logdir", help="also write TensorBoard logs to this folder")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _load(name: str):
    from . import datasets

    if name == "auto":
        name = "mnist" if datasets.MNIST.is_cached() else "digits"
    return name, datasets.MNIST() if name == "mnist" else datasets.load_digits()


def run_demo(args: argparse.Namespace) -> dict:
    """Runs the demo for parsed arguments; returns the accuracies, history and data set."""
    import functools

    import torch

    from . import functional, metrics, nn, optim, plots
    from .callbacks import KeepBestWeights
    from .seed import set_seed
    from .trainer import Trainer

    set_seed(args.seed)
    name, data = _load(args.dataset)
    config = dict(PRESETS[name])
    config["epochs"] = args.epochs or config["epochs"]
    config["batch_size"] = args.batch_size or config["batch_size"]
    model = nn.MLP(
        data.input_shape, config["hidden_layers"], data.num_classes, dropout=config["dropout"]
    )
    groups = optim.param_groups_no_decay(model, config["weight_decay"])
    trainer = Trainer(
        model,
        optim.AdamW(groups, lr=config["lr"]),
        functools.partial(functional.cross_entropy, label_smoothing=config["label_smoothing"]),
        metrics={"accuracy": metrics.Accuracy("multiclass", num_classes=data.num_classes)},
        device=args.device,
        logdir=args.logdir,
        cuda_graph=False,  # npfl_lib's AdamW counts steps on the host: not capturable
    )
    print(
        f"Data: {name} ({len(data.train)} train / {len(data.dev)} dev / {len(data.test)} test), "
        f"device: {trainer.device}\n"
        f"Model: MLP {config['hidden_layers']} ReLU, dropout {config['dropout']}; "
        f"AdamW lr {config['lr']}, weight decay {config['weight_decay']} (none on biases); "
        f"label smoothing {config['label_smoothing']}; {config['epochs']} epochs "
        f"of batch {config['batch_size']}",
        flush=True,
    )
    threads = torch.get_num_threads()
    if name == "digits" and trainer.device.type == "cpu":
        # Matrices this small gain nothing from intra-op threads, and on a busy machine
        # waiting for a descheduled thread costs more than the arithmetic.
        torch.set_num_threads(1)
    try:
        history = trainer.fit(
            data.train,
            config["epochs"],
            config["batch_size"],
            dev=data.dev,
            callbacks=[KeepBestWeights("dev_loss")],  # evaluate the best dev-loss epoch
            verbose=0 if args.quiet else 1,
        )
        dev_accuracy = trainer.evaluate(data.dev)["accuracy"]
        test_accuracy = trainer.evaluate(data.test)["accuracy"]
    finally:
        torch.set_num_threads(threads)
    print(f"dev accuracy: {dev_accuracy:.4f}\ntest accuracy: {test_accuracy:.4f}")
    if args.output:
        plots.plot_history(history, args.output)
        print(f"training curves: {args.output}")
    return {
        "dataset": name,
        "dev_accuracy": dev_accuracy,
        "test_accuracy": test_accuracy,
        "history": history,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m npfl_lib`` and the ``npfl-lib`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .trainer import resolve_device

        try:
            resolve_device(args.device)
        except ValueError as error:
            parser.error(f"argument --device: {error}")
        try:
            run_demo(args)
        except OSError as error:  # e.g. MNIST asked for but not downloadable
            print(f"npfl-lib demo: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
