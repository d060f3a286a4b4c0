"""Log-probs: masking, NLL span, one concatenated forward, chunked == direct (values and grads)."""

import pytest
import torch
from transformers import LlamaForCausalLM

from orpo.collate import PreferenceCollator
from orpo.logps import (IGNORE_INDEX, LogitsMode, NllSpan, concatenated_forward, lm_head_reproduces_logits,
                        response_logps,
                        token_logps_chunked, token_logps_from_logits, use_chunked)
from orpo.tiny import tiny_llama_config


def test_response_logps_by_hand():
    """Vocab 2, logits 0 everywhere -> every token has log-prob ln(1/2).

    labels [p, p, r, r, pad] with p/pad ignored: the targets at positions 2 and 3 count,
    so sum = 2·ln 0.5, count = 2, mean = ln 0.5.
    """
    logits = torch.zeros(1, 5, 2)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 0, IGNORE_INDEX]])
    stats = response_logps(logits, labels)
    assert stats.count.item() == 2
    assert stats.sum.item() == pytest.approx(2 * torch.log(torch.tensor(0.5)).item())
    assert stats.mean.item() == pytest.approx(torch.log(torch.tensor(0.5)).item())


def test_token_logps_match_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    expected = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(token_logps_from_logits(logits, labels), expected)


def _pairs_batch(tokenizer, n_pairs=3):
    examples = []
    for i in range(n_pairs):
        prompt = [tokenizer.bos_token_id] + list(range(10, 14 + i))
        examples.append({"prompt_ids": prompt, "chosen_ids": list(range(20, 25 + 2 * i)) + [2],
                         "rejected_ids": list(range(30, 33 + i)) + [2], "index": i})
    return PreferenceCollator(tokenizer.pad_token_id)(examples)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    return LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def test_concatenated_forward_equals_separate_forwards(model, tiny_tokenizer):
    batch = _pairs_batch(tiny_tokenizer)
    out = concatenated_forward(model, batch)
    n = out.chosen.sum.shape[0]
    for rows, stats in ((slice(0, n), out.chosen), (slice(n, 2 * n), out.rejected)):
        for row in range(rows.start, rows.stop):
            real = batch["attention_mask"][row].bool()
            ids = batch["input_ids"][row][real][None]
            logits = model(input_ids=ids).logits
            single = response_logps(logits, batch["labels"][row][real][None])
            torch.testing.assert_close(stats.sum[row - rows.start], single.sum[0], rtol=1e-5, atol=1e-5)
            assert stats.count[row - rows.start] == single.count[0]


def test_nll_span(model, tiny_tokenizer):
    batch = _pairs_batch(tiny_tokenizer)
    full = concatenated_forward(model, batch, NllSpan.PROMPT_AND_RESPONSE)
    response = concatenated_forward(model, batch, NllSpan.RESPONSE)
    torch.testing.assert_close(response.chosen_nll.sum, -full.chosen.sum)
    torch.testing.assert_close(response.chosen_nll.count, full.chosen.count)
    n = full.chosen.sum.shape[0]
    # prompt_and_response covers every real token but the first (BOS has no prediction).
    expected_counts = batch["attention_mask"][:n].sum(-1) - 1
    assert full.chosen_nll.count.tolist() == expected_counts.float().tolist()
    assert (full.chosen_nll.sum > response.chosen_nll.sum).all()


def test_chunked_equals_direct_values_and_gradients(tiny_tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=32000, hidden_size=32, num_layers=1, num_heads=2))
    batch = _pairs_batch(tiny_tokenizer, n_pairs=4)

    def run(chunked):
        model.zero_grad()
        out = concatenated_forward(model, batch, chunked=chunked, chunk_size=7)
        loss = (out.chosen.mean * 0.3 - out.rejected.mean + out.chosen_nll.sum * 0.01).sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return out, grads

    direct, direct_grads = run(False)
    chunked, chunked_grads = run(True)
    for a, b in ((direct.chosen.sum, chunked.chosen.sum), (direct.rejected.sum, chunked.rejected.sum),
                 (direct.chosen_nll.sum, chunked.chosen_nll.sum)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for name in direct_grads:
        torch.testing.assert_close(direct_grads[name], chunked_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_chunked_ignores_padding(model, tiny_tokenizer):
    batch = _pairs_batch(tiny_tokenizer)
    chunked = token_logps_chunked(model, batch["input_ids"], batch["attention_mask"], chunk_size=5)
    assert (chunked[batch["attention_mask"][:, 1:] == 0] == 0).all()


def test_auto_mode_picks_chunked_for_large_vocabularies(model):
    big = LlamaForCausalLM(tiny_llama_config(vocab_size=32000, hidden_size=16, num_layers=1, num_heads=2))
    assert use_chunked(big, LogitsMode.AUTO)
    assert not use_chunked(model, LogitsMode.AUTO)  # vocab ~1k
    assert use_chunked(model, LogitsMode.CHUNKED) and not use_chunked(big, LogitsMode.DIRECT)


def test_chunked_refuses_soft_capped_models(model):
    model.config.final_logit_softcapping = 30.0
    try:
        with pytest.raises(ValueError, match="soft-capping"):
            use_chunked(model, LogitsMode.CHUNKED)
        assert not use_chunked(model, LogitsMode.AUTO)
    finally:
        model.config.final_logit_softcapping = None


def test_chunked_path_runs_the_models_own_forward_and_one_lm_head_call(tiny_tokenizer):
    """DeepSpeed's engine forward must run once per micro-batch (it resets ZeRO-3's backward
    bookkeeping), and the LM head must be called the same number of times whatever the token count
    (under ZeRO-3 each call is an all-gather, so ranks with different token counts must agree)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=32000, hidden_size=32, num_layers=1, num_heads=2))
    calls = {"model": 0, "lm_head": 0}
    model.register_forward_pre_hook(lambda *_: calls.__setitem__("model", calls["model"] + 1))
    model.lm_head.register_forward_pre_hook(lambda *_: calls.__setitem__("lm_head", calls["lm_head"] + 1))
    for n_pairs in (1, 4):
        calls.update(model=0, lm_head=0)
        batch = _pairs_batch(tiny_tokenizer, n_pairs=n_pairs)
        out = concatenated_forward(model, batch, chunked=True, chunk_size=3)
        assert calls == {"model": 1, "lm_head": 2}  # the model's own (1 position) and the chunked one
        out.chosen.sum.sum().backward()
    assert "forward" not in model.lm_head.__dict__  # the chunked forward was only lent


def _granite(**overrides):
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    return GraniteForCausalLM(GraniteConfig(vocab_size=16384, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2, **overrides))


def _falcon_h1(**overrides):
    from transformers import FalconH1Config, FalconH1ForCausalLM

    torch.manual_seed(0)
    return FalconH1ForCausalLM(FalconH1Config(
        vocab_size=16384, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8,
        mamba_n_groups=1, mamba_chunk_size=16, **overrides))


@pytest.mark.parametrize("build, field, value", [(_granite, "logits_scaling", 8.0),
                                                  (_falcon_h1, "lm_head_multiplier", 0.0390625)])
def test_auto_mode_keeps_logit_scaling_models_direct(build, field, value):
    """Granite divides the logits by ``logits_scaling``; Falcon-H1 multiplies them by
    ``lm_head_multiplier``: the chunked path (plain ``lm_head(hidden)``) would be wrong."""
    model = build(**{field: value})
    assert not use_chunked(model, LogitsMode.AUTO)
    with pytest.raises(ValueError, match=field):
        use_chunked(model, LogitsMode.CHUNKED)
    # The numeric check alone catches it too, whatever the field is called.
    assert not lm_head_reproduces_logits(model)
    # With the scale at 1 the head is plain again: chunked is chosen and equals direct.
    plain = build(**{field: 1.0})
    assert lm_head_reproduces_logits(plain) and use_chunked(plain, LogitsMode.AUTO)
    ids = torch.tensor([[1, 50, 700, 9000, 3, 12, 16000]])
    mask = torch.ones_like(ids)
    direct = token_logps_from_logits(plain(input_ids=ids, attention_mask=mask).logits, ids)
    torch.testing.assert_close(token_logps_chunked(plain, ids, mask, chunk_size=4), direct, rtol=1e-5, atol=1e-5)
