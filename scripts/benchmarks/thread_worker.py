"""One timed configuration of the ``threads`` section, in a fresh process:

    python -m benchmarks.thread_worker step|predict 1|default|fixed REPEAT

pointseg is imported before torch, as in the console scripts, so its OpenMP wait policy
applies. ``1``: one thread; ``default``: the entry points' default, the CPUs available with a
``ThreadGovernor`` updated before every call (as ``FollowLoad`` does between batches);
``fixed``: the same count, never changed. Prints the median seconds of a training step
(``step``) or an eval-mode forward (``predict``) of spunet_small on 2 rooms at 5 cm, the voxel
count and the thread count of the last call."""

from __future__ import annotations

import statistics
import sys
import time

import pointseg  # noqa: F401  first: its OpenMP wait policy must precede torch's import

# isort: split
import torch

from pointseg.threads import ThreadGovernor, set_threads

from .core import room_batch, train_step_fn

MODES = ("1", "default", "fixed")


def measure(kind: str, mode: str, repeat: int) -> tuple[float, int, int]:
    from pointseg.models.sparse_unet import spunet_small

    if kind not in ("step", "predict"):
        raise SystemExit(f"thread_worker: kind must be 'step' or 'predict', not {kind!r}")
    if mode not in MODES:
        raise SystemExit(f"thread_worker: mode must be one of {MODES}, not {mode!r}")
    set_threads(1 if mode == "1" else None, follow_load=mode == "default")
    governor = ThreadGovernor(torch.get_num_threads()) if mode == "default" else None
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
        if governor is not None:
            governor.update()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(idx), torch.get_num_threads()


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    seconds, voxels, threads = measure(argv[0], argv[1], int(argv[2]))
    print(seconds, voxels, threads)


if __name__ == "__main__":
    main(sys.argv[1:])
