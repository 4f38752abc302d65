"""Invariants of the masked attention on tiny Llama-family and Phi-3 models built from config."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

from opengrok_dagster.training import attention
from opengrok_dagster.training.attention import (
    FLEX_MODES,
    MASK_MODES,
    attention_bias,
    attention_implementation,
    block_diagonal_mask,
)
from opengrok_dagster.training.data import MaskCollator, MaskedExample, pack_rows


VOCAB = 97


def tiny_llama():
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )


def tiny_phi3():
    return Phi3ForCausalLM(
        Phi3Config(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    )


MODELS = {"llama": tiny_llama, "phi3": tiny_phi3}


def build(family: str, implementation: str):
    torch.manual_seed(0)
    model = MODELS[family]()
    model.set_attn_implementation(implementation)
    return model.eval()


def padded_batch(lengths=(12, 7), seed=1):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=generator)
    attention_mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
    return ids, attention_mask


def logits(model, ids, attention_mask, token_mask=None):
    kwargs = {} if token_mask is None else {"token_mask": token_mask}
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attention_mask, **kwargs).logits


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("mode", MASK_MODES)
def test_all_ones_mask_reproduces_stock_sdpa(family, mode):
    ids, attention_mask = padded_batch()
    stock = logits(build(family, "sdpa"), ids, attention_mask)
    masked = logits(build(family, attention_implementation(mode)), ids, attention_mask, torch.ones(ids.shape))
    real = attention_mask.bool()
    torch.testing.assert_close(masked[real], stock[real], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_without_token_mask_every_mode_is_stock_attention(family):
    ids, attention_mask = padded_batch()
    stock = logits(build(family, "sdpa"), ids, attention_mask)
    for mode in MASK_MODES:
        torch.testing.assert_close(
            logits(build(family, attention_implementation(mode)), ids, attention_mask), stock, rtol=0, atol=0
        )


@pytest.mark.parametrize("family", sorted(MODELS))
def test_hard_mode_ignores_masked_tokens_entirely(family):
    """Masked keys get zero weight: changing the masked tokens changes nothing at the other positions."""
    ids, attention_mask = padded_batch(lengths=(12, 12))
    token_mask = torch.ones(ids.shape)
    masked_positions = [2, 5, 6]
    token_mask[:, masked_positions] = 0
    model = build(family, attention_implementation("hard"))
    altered = ids.clone()
    altered[:, masked_positions] = (altered[:, masked_positions] + 11) % (VOCAB - 1) + 1
    before, after = logits(model, ids, attention_mask, token_mask), logits(model, altered, attention_mask, token_mask)
    kept = [i for i in range(ids.shape[1]) if i not in masked_positions]
    torch.testing.assert_close(after[:, kept], before[:, kept], rtol=0, atol=0)
    assert not torch.equal(after[:, masked_positions], before[:, masked_positions])


def test_hard_bias_zero_weight_and_no_empty_row():
    token_mask = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0, 1.0]])
    padding = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    padding[1, :, :, :1] = False  # left padding in row 1: the first query sees nothing but itself
    allowed = attention_bias("hard", token_mask, padding, 5, 5, torch.float32)
    scores = torch.randn(2, 1, 5, 5).masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(-1)
    assert torch.isfinite(weights).all()
    for row in range(2):
        for query in range(5):
            for key in range(5):
                if key != query and (token_mask[row, key] == 0 or key > query or not padding[row, 0, query, key]):
                    assert weights[row, 0, query, key] == 0


def test_soft_bias_adds_log_p_inside_the_causal_mask():
    p = torch.tensor([[0.5, 1.0, 0.25, 0.0]])
    bias = attention_bias("soft", p, None, 4, 4, torch.float32)
    finite_min = torch.finfo(torch.float32).min
    assert bias[0, 0, 3, 0] == pytest.approx(float(torch.log(torch.tensor(0.5))))
    assert bias[0, 0, 3, 2] == pytest.approx(float(torch.log(torch.tensor(0.25))))
    assert bias[0, 0, 3, 3] == finite_min and bias[0, 0, 1, 2] == finite_min
    assert torch.isfinite(bias).all()


@pytest.mark.parametrize("mode", ["paper", "hard", "soft"])
def test_padding_and_causality_hold(mode):
    model = build("llama", attention_implementation(mode))
    ids, attention_mask = padded_batch(lengths=(12, 7))
    token_mask = torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)).round()
    if mode == "soft":
        token_mask = token_mask.clamp(min=0.2)
    batched = logits(model, ids, attention_mask, token_mask)
    alone = logits(model, ids[1:, :7], attention_mask[1:, :7], token_mask[1:, :7])
    torch.testing.assert_close(batched[1, :7], alone[0], rtol=1e-5, atol=1e-5)
    future_changed = ids.clone()
    future_changed[0, 8:] = 1
    torch.testing.assert_close(
        logits(model, future_changed, attention_mask, token_mask)[0, :8], batched[0, :8], rtol=0, atol=1e-6
    )


def test_paper_mode_zeroes_scores_not_weights():
    """As written in the report: a masked key's score is 0, so it still gets weight (unlike hard)."""
    ids, attention_mask = padded_batch(lengths=(10, 10))
    token_mask = torch.ones(ids.shape)
    token_mask[:, 3] = 0
    paper, hard = (build("llama", attention_implementation(mode)) for mode in ("paper", "hard"))
    altered = ids.clone()
    altered[:, 3] = (altered[:, 3] + 5) % (VOCAB - 1) + 1
    assert not torch.allclose(
        logits(paper, ids, attention_mask, token_mask)[:, 6:],
        logits(paper, altered, attention_mask, token_mask)[:, 6:],
    )
    torch.testing.assert_close(
        logits(hard, ids, attention_mask, token_mask)[:, 6:],
        logits(hard, altered, attention_mask, token_mask)[:, 6:],
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("mode", ["paper", "hard", "soft"])
def test_bias_is_built_once_per_forward(monkeypatch, mode):
    builds = []
    builder = attention.key_scale if mode == "paper" else attention.attention_bias
    monkeypatch.setattr(attention, builder.__name__, lambda *args: builds.append(1) or builder(*args))
    model = build("llama", attention_implementation(mode))
    ids, attention_mask = padded_batch()
    token_mask = torch.full(ids.shape, 0.5)
    logits(model, ids, attention_mask, token_mask)
    logits(model, ids, attention_mask, token_mask.clone())
    assert len(builds) == 2  # two forwards of two layers each


@pytest.mark.parametrize(
    "family,targets", [("llama", ["q_proj", "k_proj", "v_proj", "o_proj"]), ("phi3", ["qkv_proj", "o_proj"])]
)
@pytest.mark.parametrize("mode", ["paper", "hard", "soft"])
def test_gradients_flow_only_through_lora(family, targets, mode):
    model = get_peft_model(
        build(family, attention_implementation(mode)).train(), LoraConfig(r=4, lora_alpha=8, target_modules=targets)
    )
    examples = [
        MaskedExample("a", list(range(1, 13)), 6, [1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1], [0.9] * 12),
        MaskedExample("b", list(range(20, 28)), 3, [1, 1, 0, 1, 1, 0, 1, 1], [0.3] * 8),
    ]
    batch = MaskCollator(pad_token_id=0, mask_mode=mode)(examples)
    model(**batch).loss.backward()
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            assert parameter.requires_grad and parameter.grad is not None and torch.isfinite(parameter.grad).all(), (
                name
            )
        else:
            assert not parameter.requires_grad and parameter.grad is None, name
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_collator_labels_only_response_tokens():
    batch = MaskCollator(pad_token_id=0, mask_mode="soft")(
        [
            MaskedExample("a", [5, 6, 7, 8], 2, [1, 0, 1, 1], [0.5, 0.1, 1.0, 0.7]),
            MaskedExample("b", [9, 10], 1, [1, 1], [1.0, 0.2]),
        ]
    )
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    torch.testing.assert_close(batch["token_mask"], torch.tensor([[0.5, 0.1, 1.0, 0.7], [1.0, 0.2, 1.0, 1.0]]))
    assert "token_mask" not in MaskCollator(pad_token_id=0, mask_mode="none")(
        [MaskedExample("a", [5, 6], 1, [1, 1], [1, 1])]
    )


@pytest.mark.integration
def test_smollm2_modes_match_stock_with_all_ones_and_hard_ignores_masked_tokens(offline_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(offline_model).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (2, 24), generator=generator)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 16:] = 0
    stock = logits(model, ids, attention_mask)
    real = attention_mask.bool()
    for mode in MASK_MODES:
        model.set_attn_implementation(attention_implementation(mode))
        torch.testing.assert_close(
            logits(model, ids, attention_mask, torch.ones(ids.shape))[real], stock[real], rtol=0, atol=1e-4
        )
    token_mask = torch.ones(ids.shape)
    token_mask[:, [3, 7]] = 0
    altered = ids.clone()
    altered[:, [3, 7]] = 11
    kept = [i for i in range(16) if i not in (3, 7)]
    torch.testing.assert_close(
        logits(model, altered, attention_mask, token_mask)[:, kept],
        logits(model, ids, attention_mask, token_mask)[:, kept],
        rtol=0,
        atol=0,
    )


def random_examples(count=7, seed=4):
    rng = torch.Generator().manual_seed(seed)
    examples = []
    for index in range(count):
        length = int(torch.randint(5, 20, (1,), generator=rng))
        ids = torch.randint(1, VOCAB, (length,), generator=rng).tolist()
        m = torch.rand(length, generator=rng).round().tolist()
        p = torch.rand(length, generator=rng).clamp(min=0.05).tolist()
        examples.append(MaskedExample(f"e{index}", ids, int(torch.randint(1, length - 1, (1,), generator=rng)), m, p))
    return examples


def per_example_losses(model, batch, rows, drop=()) -> dict[str, float]:
    """Summed next-token loss of each example, found through its segment (packed) or its row (unpacked)."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k not in drop}).logits
    token_loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="none"
    )
    segments = batch.get("segment_ids", batch["attention_mask"])[:, 1:]
    return {
        example.example_id: float(token_loss[row][segments[row] == segment].sum())
        for row, packed in enumerate(rows)
        for segment, example in enumerate(packed, start=1)
    }


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("mode", MASK_MODES)
def test_packed_batch_has_each_examples_unpacked_loss(family, mode):
    """Block-diagonal attention, restarted positions, each example's own token mask: packing changes no loss."""
    model = build(family, attention_implementation(mode))
    examples = random_examples()
    unpacked = per_example_losses(model, MaskCollator(0, mode)(examples), [[example] for example in examples])
    rows = pack_rows(examples, 40)
    packed_batch = MaskCollator(0, mode, pack_to=40)(examples)
    assert len(rows) < len(examples) and packed_batch["input_ids"].shape[0] == len(rows)
    packed = per_example_losses(model, packed_batch, rows)
    assert packed.keys() == unpacked.keys()
    for example_id, loss in unpacked.items():
        assert packed[example_id] == pytest.approx(loss, rel=1e-5, abs=1e-5), example_id
    total = sum(len(e.input_ids) - e.response_start for e in examples)
    unpacked_labels = MaskCollator(0, mode)(examples)["labels"]
    assert int((packed_batch["labels"] != -100).sum()) == total == int((unpacked_labels != -100).sum())


def test_packing_without_segments_would_leak_across_examples():
    """The block-diagonal mask is what keeps packed examples apart (the packing test above can fail)."""
    model = build("llama", attention_implementation("hard"))
    examples = random_examples()
    batch = MaskCollator(0, "hard", pack_to=40)(examples)
    rows = pack_rows(examples, 40)
    separate = per_example_losses(model, batch, rows)
    leaking = per_example_losses(model, batch, rows, drop=("segment_ids",))
    assert any(abs(separate[k] - leaking[k]) > 1e-3 for k in separate)


def test_pack_rows_first_fit_decreasing_within_capacity():
    examples = [MaskedExample(str(n), [1] * n, 1, [1] * n, [1] * n) for n in (9, 3, 7, 5, 2)]
    rows = pack_rows(examples, 10)
    assert [[int(e.example_id) for e in row] for row in rows] == [[9], [7, 3], [5, 2]]


class _AttentionLayer(torch.nn.Module):
    """What transformers' SDPA forward reads from an attention module."""

    is_causal = True
    num_key_value_groups = 2


@pytest.mark.parametrize("mode", FLEX_MODES)
def test_flex_attention_equals_the_sdpa_path(mode):
    """FlexAttention against SDPA with the dense mask on a padded batch with packed rows and GQA.

    Forward only: torch 2.13's FlexAttention has no backward on CPU (NotImplementedError), so the compiled
    forward + backward comparison runs on CUDA in bench/gpu_check.py.
    """
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, dim = 2, 4, 2, 40, 8
    query, key, value = (torch.randn(batch, h, length, dim, generator=generator) for h in (heads, kv_heads, kv_heads))
    padding = torch.ones(batch, length, dtype=torch.bool)
    padding[1, 30:] = False
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    segments = torch.ones(batch, length, dtype=torch.long)
    segments[0, 17:] = 2
    allowed = block_diagonal_mask(segments, causal & padding[:, None, None, :], length, length)
    token_mask = torch.rand(batch, length, generator=generator)
    token_mask = token_mask.round() if mode == "hard" else token_mask.clamp(min=0.05)
    layer = _AttentionLayer().eval()
    sdpa, _ = attention.masked_sdpa_attention(
        layer, query, key, value, allowed, mode=mode, token_mask=token_mask, scaling=dim**-0.5
    )
    flex, _ = attention.flex_masked_attention(
        layer, query, key, value, allowed, mode=mode, token_mask=token_mask, scaling=dim**-0.5, compiled=False
    )
    torch.testing.assert_close(flex[padding], sdpa[padding], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(
        flex,
        attention.flex_masked_attention(
            layer, query, key, value, None, mode=mode, token_mask=token_mask, scaling=dim**-0.5, compiled=False
        )[0],
    )  # the mask matters: without the packing/padding mask the result differs
