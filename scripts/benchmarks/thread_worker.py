"""One timed configuration of the ``threads`` section, in a fresh process:

    python -m benchmarks.thread_worker step|predict THREADS REPEAT

pointseg is imported before torch, as in the console scripts, so its OpenMP wait policy
applies. Prints the median seconds of a training step (``step``) or an eval-mode forward
(``predict``) of spunet_small on 2 rooms at 5 cm, and the voxel count."""

from __future__ import annotations

import statistics
import sys
import time

import pointseg  # noqa: F401  first: its OpenMP wait policy must precede torch's import

# isort: split
import torch

from pointseg.threads import set_threads

from .core import room_batch, train_step_fn


def measure(kind: str, threads: int, repeat: int) -> tuple[float, int]:
    from pointseg.models.sparse_unet import spunet_small

    if kind not in ("step", "predict"):
        raise SystemExit(f"thread_worker: kind must be 'step' or 'predict', not {kind!r}")
    set_threads(threads or None)
    feat, idx, _ = room_batch(2, 0.05)
    torch.manual_seed(0)
    net = spunet_small(4, 9)
    if kind == "step":
        fn = train_step_fn(net, feat, idx, 2, 9)
    else:
        net.eval()

        def fn() -> None:
            with torch.inference_mode():
                net(feat, idx, 2)

    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(idx)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    seconds, voxels = measure(argv[0], int(argv[1]), int(argv[2]))
    print(seconds, voxels)


if __name__ == "__main__":
    main(sys.argv[1:])
