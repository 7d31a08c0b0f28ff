"""Checks that need a CUDA device (skipped elsewhere); `benchmarks/gpu_check.py` runs them on a GPU session.

Only torch and transformers are needed (the device image has neither papermill nor datasets).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fisherlib as fl
from fisherlib.models.loading import load_model, run_with_oom_backoff
from helpers.models import COLS, ROWS, make_batch, save_random_qwen3
from helpers.precision import EPS, mp_boundary, near_deterministic

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_qwen3(tmp_path_factory.mktemp("qwen3_cuda"))


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_cuda_capture_matches_the_cpu(model_dir: Path, dtype: str, atol: float) -> None:
    cpu = load_model(model_dir, device="cpu")
    gpu = load_model(model_dir, device="cuda", dtype=dtype)
    assert gpu.card()["dtype"] == dtype and gpu.causal_check_error < (1e-4 if dtype == "float32" else 5e-2)
    input_ids, attention_mask = make_batch()
    h_gpu = gpu.capture(input_ids, attention_mask, ROWS, COLS)
    assert h_gpu.device.type == "cuda" and h_gpu.dtype == torch.float32
    torch.testing.assert_close(h_gpu.cpu(), cpu.capture(input_ids, attention_mask, ROWS, COLS), atol=atol, rtol=atol)


def test_cuda_device_map_auto(model_dir: Path) -> None:
    pytest.importorskip("accelerate")
    # float32 on purpose: with device_map the model lands on CUDA, whose default dtype is bfloat16.
    mapped = load_model(model_dir, device_map="auto", max_memory={0: "2GiB", "cpu": "4GiB"}, dtype="float32")
    assert mapped.device.type == "cuda" and mapped.dtype == torch.float32
    plain = load_model(model_dir, device="cpu")
    input_ids, attention_mask = make_batch()
    torch.testing.assert_close(
        mapped.capture(input_ids, attention_mask, ROWS, COLS).cpu(), plain.capture(input_ids, attention_mask, ROWS, COLS),
        atol=1e-4, rtol=1e-4,
    )  # fmt: skip


def test_cuda_boundary_at_extreme_probabilities_matches_mpmath() -> None:
    pytest.importorskip("mpmath")
    z, A = near_deterministic(30.0, P=2)
    t = fl.empirical_boundary(z.cuda(), A.cuda(), EPS).cpu()
    for i in range(z.shape[0]):
        for j in range(A.shape[1]):
            for e, eps in enumerate(EPS):
                assert abs(t[i, j, e].item() / mp_boundary(z[i], A[i, j], eps) - 1) < 1e-6


def test_cuda_fisher_matches_the_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3000, 64, generator=g)
    p = torch.softmax(torch.randn(3, 64, generator=g) * 3 @ W.T / 8, -1).double()
    for cpu, gpu in zip(fl.fisher_eigh(W, p, 16), fl.fisher_eigh(W.cuda(), p.cuda(), 16)):
        torch.testing.assert_close(gpu.cpu().abs(), cpu.abs(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(fl.fisher_pullback(W.cuda(), p.cuda()).cpu(), fl.fisher_pullback(W, p), rtol=1e-9, atol=1e-10)


def test_cuda_out_of_memory_backs_off() -> None:
    free, _ = torch.cuda.mem_get_info()
    too_much = int(free // 4) * 8  # bytes: twice the free memory once the chunk holds 8 items

    def allocate(chunk: list[int]) -> int:
        block = torch.empty(len(chunk) * too_much // 8 // 4, dtype=torch.float32, device="cuda")
        del block
        return len(chunk)

    assert sum(run_with_oom_backoff(allocate, list(range(8)), batch_size=8)) == 8
