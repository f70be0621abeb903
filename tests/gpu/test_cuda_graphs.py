"""Decode steps replayed from CUDA graphs on the GPU: the same logits as eager decode, and
(almost) every decode step replayed."""

from __future__ import annotations

import pytest
import torch

from engine.config import EngineConfig
from engine.engine import Engine
from engine.model_runner import ModelRunner
from engine.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from engine.request import InjectedEmbeds
from engine.sampling import SamplingParams
from kernels.attention import backend, phases

pytestmark = pytest.mark.gpu

CONFIG = dict(
    vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=128, rms_norm_eps=1e-6,
    rope_theta=1e6, max_position_embeddings=4096, tie_word_embeddings=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = Qwen3ForCausalLM(Qwen3Config.from_dict(CONFIG), backend(None, "cuda"))
    return m.eval()


def run(
    model, cuda_graphs: bool, prompts, max_tokens, prompt_graphs=False, staggered=False, embeds=()
):
    config = EngineConfig(
        device="cuda", dtype=torch.float32, num_blocks=256, max_num_seqs=16,
        cuda_graphs=cuda_graphs, prompt_graphs=prompt_graphs,
    )  # fmt: skip
    eng = Engine(model, None, config)
    runner, seen = eng.runner, []

    def step(batch):  # the engine's own step, with each step's logits kept
        logits, sampling = ModelRunner.run(runner, batch)
        seen.append(logits.float().cpu())
        return logits, sampling

    runner.run = step
    reqs = []
    for i, (p, n) in enumerate(zip(prompts, max_tokens, strict=True)):
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        reqs.append(eng.add(p, params, embeds=embeds if i == 1 else ()))
        if staggered:  # requests arrive while others decode: prompts share steps with decodes
            eng.step()
    while eng.has_work():
        eng.step()
    return [r.output_ids for r in reqs], seen, runner


def test_replayed_decode_matches_eager(model):
    g = torch.Generator().manual_seed(1)
    lengths = [3, 40, 17, 300, 1, 64, 129, 5, 77]
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in lengths]
    max_tokens = [20 + 7 * i for i in range(len(prompts))]  # ragged: the batch shrinks
    want, want_logits, eager = run(model, False, prompts, max_tokens)
    got, got_logits, runner = run(model, True, prompts, max_tokens)
    assert eager.graphs is None and runner.graphs is not None
    assert phases(runner.attention)["decode"] == "triton-paged"
    assert set(runner.graphs.graphs) == set(runner.graphs.sizes)
    for a, b in zip(got_logits, want_logits, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)
    assert got == want
    assert runner.graph_steps >= 0.95 * runner.decode_steps > 0


def test_replayed_prompt_steps_match_eager(model):
    g = torch.Generator().manual_seed(2)
    lengths = [3, 40, 17, 300, 1, 64, 129, 5, 77, 1000]  # all at once: under 2,048 tokens
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in lengths]
    max_tokens = [10 + 3 * i for i in range(len(prompts))]
    audio = [InjectedEmbeds(5, torch.randn(20, CONFIG["hidden_size"], generator=g).cuda())]
    want, want_logits, _ = run(model, True, prompts, max_tokens, False, True, audio)
    got, got_logits, runner = run(model, True, prompts, max_tokens, True, True, audio)
    assert runner.prompt_graphs is not None
    assert set(runner.prompt_graphs.graphs) == set(runner.prompt_graphs.sizes)
    for a, b in zip(got_logits, want_logits, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)
    assert got == want
    assert runner.prompt_graph_steps == runner.prompt_steps > 1  # prompts wait and batch up


def test_no_graphs_when_turned_off_or_not_graph_safe(model):
    eng = Engine(model, None, EngineConfig(device="cuda", num_blocks=64, cuda_graphs=False))
    assert eng.runner.graphs is None
    varlen = Qwen3ForCausalLM(Qwen3Config.from_dict(CONFIG), backend("torch-varlen", "cuda"))
    eng = Engine(varlen.to("cuda").eval(), None, EngineConfig(device="cuda", num_blocks=64))
    assert eng.runner.graphs is None  # its decode reads lengths back from the device
