"""Time one training epoch of workload W1 with four loops; see docs/benchmarks.md.

W1 (the NPFL138 mnist_regularization configuration): 55,000 x 784 synthetic learnable
inputs (labels of a random linear teacher), 10 classes, batch 50, MLP [400] ReLU,
dropout 0.5, label smoothing 0.1, AdamW(lr=1e-3, weight_decay=0.1). Each loop runs one
warm-up epoch, then ``--epochs`` timed epochs, the loops taking turns epoch by epoch;
the medians of wall-clock and process CPU time are reported with their ratios to (a):

    (a) plain DataLoader loop     (b) hand loop, data on the device
    (c) npfl_lib.Trainer.fit      (d) Trainer.fit with npfl_lib.optim.AdamW

Usage: python benchmarks/train_epoch.py [--rows 11000] [--device cpu] [--epochs 3] [--threads N]
                                       [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import npfl_lib
import npfl_lib.optim

FEATURES, HIDDEN, CLASSES, BATCH = 784, 400, 10, 50


def make_data(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(FEATURES, CLASSES, generator=generator)
    inputs = torch.rand(rows, FEATURES, generator=generator)
    return inputs, (inputs @ teacher).argmax(1)


def make_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(HIDDEN, CLASSES),
    )


def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, label_smoothing=0.1)


def plain_dataloader(inputs, targets, device):
    model = make_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    dataset = torch.utils.data.TensorDataset(inputs, targets)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)

    def epoch():
        model.train()
        for batch_inputs, batch_targets in loader:
            batch_inputs, batch_targets = batch_inputs.to(device), batch_targets.to(device)
            loss = loss_fn(model(batch_inputs), batch_targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return epoch


def resident_hand_loop(inputs, targets, device):
    model = make_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    inputs, targets = inputs.to(device), targets.to(device)

    def epoch():
        model.train()
        order = torch.randperm(len(inputs), device=device)
        for start in range(0, len(inputs), BATCH):
            index = order[start : start + BATCH]
            loss = loss_fn(model(inputs[index]), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return epoch


def trainer_fit(inputs, targets, device, optimizer_class=torch.optim.AdamW):
    model = make_model()
    optimizer = optimizer_class(model.parameters(), lr=1e-3, weight_decay=0.1)
    trainer = npfl_lib.Trainer(model, optimizer, loss_fn, device=device)
    return lambda: trainer.fit((inputs, targets), epochs=1, batch_size=BATCH, verbose=0)


VARIANTS = {
    "(a) plain DataLoader loop": plain_dataloader,
    "(b) hand loop, data on device": resident_hand_loop,
    "(c) Trainer.fit": trainer_fit,
    "(d) Trainer.fit, npfl_lib AdamW": lambda x, y, d: trainer_fit(x, y, d, npfl_lib.optim.AdamW),
}


def time_interleaved(epochs_by_variant: dict, device: torch.device, rounds: int) -> dict:
    """Times ``rounds`` epochs of each variant, taking turns: a, b, c, d, a, b, ...

    Returns, per variant, a list of ``(wall seconds, CPU seconds of this process)``.
    Taking turns spreads any change in the machine's load (other processes on a shared
    machine) over all variants alike. The CPU time does not count waiting for a core,
    so on a busy machine it is the steadier measure of the work each loop does.
    """

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for epoch in epochs_by_variant.values():
        epoch()  # warm-up: allocations, lazy imports, CUDA-graph capture
    sync()
    times = {label: [] for label in epochs_by_variant}
    for _ in range(rounds):
        for label, epoch in epochs_by_variant.items():
            wall, cpu = time.perf_counter(), time.process_time()
            epoch()
            sync()
            times[label].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=55000, help="examples (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs, >= 1 (default: 3)")
    parser.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.rows < BATCH or args.epochs < 1:
        parser.error(f"--rows must be >= {BATCH} and --epochs >= 1")
    device = npfl_lib.trainer.resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device={device} ({name or platform.machine()}), threads={torch.get_num_threads()}, "
        f"torch={torch.__version__}, python={platform.python_version()}, rows={args.rows}, "
        f"median of {args.epochs} interleaved epochs after a warm-up"
    )
    inputs, targets = make_data(args.rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a Trainer that cannot use a CUDA graph says why
        epochs = {label: make(inputs, targets, device) for label, make in VARIANTS.items()}
        times = time_interleaved(epochs, device, args.epochs)
    notes = sorted({str(w.message) for w in caught if str(w.message).startswith("Trainer")})
    baseline = [statistics.median(t[i] for t in times[next(iter(times))]) for i in (0, 1)]
    print(f"{'':34s} {'wall':>8s}  {'ratio':>5s}  {'CPU':>8s}  {'ratio':>5s}  wall of each epoch")
    results = {}
    for label, measured in times.items():
        wall, cpu = (statistics.median(t[i] for t in measured) for i in (0, 1))
        print(
            f"{label:34s} {wall:7.4f}s  {wall / baseline[0]:4.2f}x  {cpu:7.4f}s  "
            f"{cpu / baseline[1]:4.2f}x  {', '.join(f'{t[0]:.3f}' for t in measured)}"
        )
        results[label] = {"wall_s": wall, "cpu_s": cpu, "epochs_wall_s": [t[0] for t in measured]}
    for note in notes:
        print(note)
    if args.json:
        info = {"device": str(device), "device_name": name, "torch": torch.__version__}
        info.update(rows=args.rows, epochs=args.epochs, threads=torch.get_num_threads())
        with open(args.json, "w") as file:
            json.dump({**info, "loops": results, "trainer_warnings": notes}, file, indent=1)


if __name__ == "__main__":
    main()
