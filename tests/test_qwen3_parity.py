"""Our Qwen3 against HF transformers' outputs (golden fixtures) on tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch

from engine.request import InjectedEmbeds
from engine.tokenizer import Tokenizer
from tests.qwen3_golden import (
    agree_until_margin,
    checkpoint,
    engine,
    golden,
    golden_tensors,
    greedy,
    prompt_logits,
)

CHECKPOINTS = ["untied", "tied"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("qwen3")


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_teacher_forced_logits_match(root, name):
    eng = engine(checkpoint(name, root))
    for p in golden()["checkpoints"][name]["prompts"]:
        want = golden_tensors()[p["logits"]]
        got = prompt_logits(eng, p["input_ids"])[p["logits_start"] :]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=p["name"])


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_greedy_tokens_match(root, name):
    eng = engine(checkpoint(name, root))
    for p in golden()["checkpoints"][name]["prompts"]:
        [out] = eng.generate([p["input_ids"]], greedy(len(p["greedy_ids"])))
        assert agree_until_margin(out, p["greedy_ids"], p["greedy_top2_margins"]), p["name"]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_injected_embeddings_match(root, name):
    case = golden()["checkpoints"][name]["injected"]
    a, b = case["span"]
    values = golden_tensors()[case["embeds"]]
    eng = engine(checkpoint(name, root))
    embeds = [InjectedEmbeds(a, values)]
    got = prompt_logits(eng, case["input_ids"], embeds)[case["logits_start"] :]
    torch.testing.assert_close(got, golden_tensors()[case["logits"]], atol=1e-4, rtol=1e-4)
    req = eng.add(case["input_ids"], greedy(len(case["greedy_ids"])), embeds=embeds)
    while eng.has_work():
        eng.step()
    assert agree_until_margin(req.output_ids, case["greedy_ids"], case["greedy_top2_margins"])


def test_sharded_checkpoint_loads_the_same_weights(root):
    ids = golden()["checkpoints"]["untied"]["prompts"][1]["input_ids"]
    one = prompt_logits(engine(checkpoint("untied", root)), ids)
    two = prompt_logits(engine(checkpoint("untied", root, shards=2)), ids)
    torch.testing.assert_close(one, two, atol=0, rtol=0)


def test_tokenizer_and_chat_template_match(root):
    tok = Tokenizer.from_folder(checkpoint("untied", root))
    ref = golden()["tokenizer"]
    for case in ref["encodings"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.decode(case["ids"]) == case["decoded"]
    for case in ref["chat"]:
        text = tok.apply_chat_template(case["messages"], **case["template_kwargs"])
        assert text == case["text"]
        assert tok.encode(text) == case["ids"]


def test_fused_projections_are_views_that_follow_new_weights(root):
    eng = engine(checkpoint("untied", root))
    model = eng.model
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    # served as one GEMM each, with the named parameters as views: nothing stored twice
    assert attn.qkv[0].data_ptr() == attn.q_proj.weight.data_ptr()
    assert mlp.gate_up.data_ptr() == mlp.gate_proj.weight.data_ptr()
    assert mlp.up_proj.weight.data_ptr() > mlp.gate_proj.weight.data_ptr()
    g = torch.Generator().manual_seed(7)
    new = {n: p + 0.02 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    model.load_weights(new)  # writes through the views into the fused weights
    ids = golden()["checkpoints"]["untied"]["prompts"][1]["input_ids"]
    with torch.no_grad():
        dense = model.logits(model.forward_dense(model.model.embed_tokens(torch.tensor([ids]))))
    torch.testing.assert_close(prompt_logits(eng, ids), dense[0], atol=1e-4, rtol=1e-4)
