"""The engine on a CUDA GPU: parity with the reference, the paged attention, bf16 serving.

Run with `make test-gpu` on a GPU host (no web stack needed)."""

from __future__ import annotations

import pytest
import torch

from engine.request import InjectedEmbeds
from tests.qwen3_golden import (
    agree_until_margin,
    checkpoint,
    engine,
    golden,
    golden_tensors,
    greedy,
    prompt_logits,
)
from tests.test_attention import dense_attention, paged_case

pytestmark = pytest.mark.gpu
CHECKPOINTS = ["untied", "tied"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    return tmp_path_factory.mktemp("qwen3")


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_float32_logits_and_greedy_match_the_reference(root, name):
    eng = engine(checkpoint(name, root), device="cuda")
    ck = golden()["checkpoints"][name]
    for p in ck["prompts"]:
        got = prompt_logits(eng, p["input_ids"])[p["logits_start"] :].cpu()
        torch.testing.assert_close(got, golden_tensors()[p["logits"]], atol=2e-4, rtol=2e-4)
    outs = eng.generate([p["input_ids"] for p in ck["prompts"]], greedy(12))
    for out, p in zip(outs, ck["prompts"], strict=True):
        assert agree_until_margin(out, p["greedy_ids"], p["greedy_top2_margins"]), p["name"]
    case = ck["injected"]
    embeds = [InjectedEmbeds(case["span"][0], golden_tensors()[case["embeds"]].cuda())]
    got = prompt_logits(eng, case["input_ids"], embeds)[case["logits_start"] :].cpu()
    torch.testing.assert_close(got, golden_tensors()[case["logits"]], atol=2e-4, rtol=2e-4)


def test_bfloat16_serving_stays_close(root):
    eng = engine(checkpoint("untied", root), device="cuda", dtype=torch.bfloat16)
    for p in golden()["checkpoints"]["untied"]["prompts"]:
        got = prompt_logits(eng, p["input_ids"])[p["logits_start"] :].float().cpu()
        want = golden_tensors()[p["logits"]]
        assert (got - want).abs().max() < 0.15 * want.std()  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize(
    "seq_lens, new_lens", [([7, 13, 1, 22], [7, 5, 1, 3]), ([900, 17, 4, 64], [1, 1, 1, 1])]
)
def test_paged_sdpa_on_cuda(seq_lens, new_lens):
    from kernels.attention import backend

    q, k_cache, v_cache, meta, qs, ks, vs = paged_case(seq_lens, new_lens, block_size=16)
    dev = torch.device("cuda")
    meta.cu_seqlens_q, meta.seqused_k = meta.cu_seqlens_q.to(dev), meta.seqused_k.to(dev)
    meta.block_tables, meta.slot_mapping = meta.block_tables.to(dev), meta.slot_mapping.to(dev)
    out = backend("sdpa")(q.to(dev), k_cache.to(dev), v_cache.to(dev), meta, 8**-0.5).cpu()
    want = torch.cat(
        [dense_attention(a, b, c, 8**-0.5) for a, b, c in zip(qs, ks, vs, strict=True)]
    )
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", ["sdpa", "torch-varlen"])
def test_paged_backends_in_bfloat16(name):
    from kernels.attention import backend

    q, k_cache, v_cache, meta, qs, ks, vs = paged_case(
        [300, 17, 4, 64, 129], [300, 1, 4, 1, 40], block_size=16, h=8, h_kv=2, d=128
    )
    dev, bf = torch.device("cuda"), torch.bfloat16
    meta.cu_seqlens_q, meta.seqused_k = meta.cu_seqlens_q.to(dev), meta.seqused_k.to(dev)
    meta.block_tables, meta.slot_mapping = meta.block_tables.to(dev), meta.slot_mapping.to(dev)
    out = backend(name, "cuda")(
        q.to(dev, bf), k_cache.to(dev, bf), v_cache.to(dev, bf), meta, 128**-0.5
    )
    want = torch.cat(
        [dense_attention(a, b, c, 128**-0.5) for a, b, c in zip(qs, ks, vs, strict=True)]
    )
    torch.testing.assert_close(out.float().cpu(), want, atol=3e-2, rtol=3e-2)


def test_cuda_picks_triton_decode_and_the_best_prefill():
    from kernels.attention import backend, phases
    from kernels.fa4 import fa4_unavailable

    prefill = "torch-varlen" if fa4_unavailable("cuda") else "fa4"
    assert phases(backend(None, "cuda")) == {
        "decode": "triton-paged",
        "prefill": prefill,
        "prefill under 2048": "triton-paged",
    }


def test_transformers_does_not_mistake_our_kernels_package():
    from transformers.utils.import_utils import is_kernels_available

    assert not is_kernels_available()
