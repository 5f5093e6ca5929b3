"""The CUDA path: spconv's CUDA kernels against pointseg's CPU path, AMP training steps, and a
Lightning run on the GPU whose checkpoint predicts on the CPU. Skipped without a CUDA device."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pointseg.data.datasets.synthetic import SyntheticRooms
from pointseg.data.voxelize import voxelize
from pointseg.models.sparse_unet import spunet_small
from pointseg.sparse import gather_conv
from tests.conftest import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _scene(seed: int = 0, voxel_size: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    s = SyntheticRooms("train", num_scenes=1, seed=seed, room_size=(4.0, 5.0))[0]
    f = np.concatenate([s["color"], s["coord"][:, 2:3] - s["coord"][:, 2].min()], 1)
    v = voxelize(s["coord"], f.astype(np.float32), voxel_size=voxel_size)
    idx = np.zeros((len(v.grid_coord), 4), dtype=np.int32)
    idx[:, 1:] = v.grid_coord
    return torch.from_numpy(np.ascontiguousarray(v.features)), torch.from_numpy(idx)


def test_cuda_convs_use_implicit_gemm_and_the_same_model_runs_on_cpu_tensors() -> None:
    from spconv.pytorch.core import ImplicitGemmIndiceData, IndiceData

    from pointseg.sparse import sparse_tensor
    from pointseg.sparse.rulebook import Rulebook

    net = spunet_small(4, 9).cuda().eval()
    feat, idx = _scene()
    x = sparse_tensor(feat.cuda(), idx.cuda(), 1, levels=4)
    out = net.encoders[0](net.stem(x))
    # the 5x5x5 stem (125 offsets) on Native pairs (gather_conv), the rest on implicit GEMM
    assert isinstance(out.indice_dict["stem"], IndiceData)
    assert isinstance(out.indice_dict["down1"], ImplicitGemmIndiceData)
    cpu_out = net.cpu().encoders[0](net.stem(sparse_tensor(feat, idx, 1, levels=4)))
    assert isinstance(cpu_out.indice_dict["down1"], Rulebook)
    with torch.no_grad():
        on_gpu = net.cuda()(feat.cuda(), idx.cuda(), 1).cpu()
        on_cpu = net.cpu()(feat, idx, 1)
        again = net.cuda()(feat.cuda(), idx.cuda(), 1).cpu()
    torch.testing.assert_close(on_cpu, on_gpu, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(again, on_gpu)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(
        (a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm().clamp_min(1e-30)
    )


def test_cuda_forward_and_gradients_match_the_cpu_path() -> None:
    torch.manual_seed(0)
    net = spunet_small(4, 9).cuda().train()
    cpu = copy.deepcopy(net).cpu()
    feat, idx = _scene()
    labels = torch.randint(0, 9, (len(idx),), generator=torch.Generator().manual_seed(1))

    out_cpu = cpu(feat, idx, 1)
    nn.functional.cross_entropy(out_cpu, labels).backward()
    out_gpu = net(feat.cuda(), idx.cuda(), 1)
    nn.functional.cross_entropy(out_gpu, labels.cuda()).backward()

    # fp32 on both sides (spconv's TF32 kernels are off by default): rounding only
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-3, atol=1e-4)
    for (name, p_gpu), p_cpu in zip(net.named_parameters(), cpu.parameters(), strict=True):
        assert p_gpu.grad is not None, name
        # gradients sum ~10^4 rows in another order (BN's with cancellation): compare as vectors
        assert _relative(p_gpu.grad, p_cpu.grad) < 5e-3, (name, _relative(p_gpu.grad, p_cpu.grad))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_amp_training_steps_are_finite_and_close_to_fp32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = spunet_small(4, 9).cuda()
    feat, idx = (t.cuda() for t in _scene())
    net.eval()
    with torch.no_grad():
        ref = net(feat, idx, 1)
        with torch.autocast("cuda", dtype=dtype):
            amp = net(feat, idx, 1)
    assert amp.dtype == dtype  # the head ran in reduced precision, so AMP was really on
    rel = float((amp.float() - ref).norm() / ref.norm())
    assert rel < (0.02 if dtype is torch.float16 else 0.08), rel
    assert (amp.float().argmax(1) == ref.argmax(1)).float().mean() > 0.95

    net.train()
    labels = torch.randint(0, 9, (len(idx),), device="cuda")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = nn.functional.cross_entropy(net(feat, idx, 1).float(), labels)
        assert torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    for p in net.parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
    moved = sum(not torch.equal(p, p0) for p, p0 in zip(net.parameters(), before, strict=True))
    # every weight moved: GradScaler did not skip all three steps as overflows
    assert moved == len(before)


def test_lightning_trains_on_gpu_with_amp_and_predicts_on_cpu(compose_cfg, tmp_path: Path) -> None:
    from pointseg.segmenter import Segmenter
    from pointseg.train import train

    cfg = compose_cfg("train", [*TINY, "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1"])
    assert cfg.trainer.precision == "16-mixed"  # AMP by default when a GPU is there
    result = train(cfg)
    assert result["best_ckpt"] and 0.0 <= result["val/miou"] <= 1.0

    # a checkpoint written on the GPU loads on either device and gives the same labels
    s = SyntheticRooms("val", num_scenes=1, seed=0)[0]
    on_cpu = Segmenter.from_checkpoint(result["best_ckpt"], device="cpu")
    on_gpu = Segmenter.from_checkpoint(result["best_ckpt"], device="cuda")
    assert on_gpu.device.type == "cuda"
    sample = {"coord": s["coord"], "color": s["color"]}
    a, b = on_cpu.predict(sample), on_gpu.predict(sample)
    assert (a.labels == b.labels).mean() > 0.999


def test_cuda_stem_runs_as_one_gather_and_gemm(monkeypatch) -> None:
    calls: list[str] = []
    forward, backward = gather_conv.forward, gather_conv.backward
    monkeypatch.setattr(
        gather_conv, "forward", lambda *a, **k: calls.append("f") or forward(*a, **k)
    )
    monkeypatch.setattr(
        gather_conv, "backward", lambda *a, **k: calls.append("b") or backward(*a, **k)
    )
    net = spunet_small(4, 9).cuda()
    feat, idx = (t.cuda() for t in _scene())
    with torch.autocast("cuda", dtype=torch.float16):
        out = net(feat, idx, 1)
    out.float().sum().backward()
    assert calls == ["f", "b"]  # the 5x5x5 stem, and no other conv
    assert net.stem.conv.weight.grad is not None and torch.isfinite(net.stem.conv.weight.grad).all()
