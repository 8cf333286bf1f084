"""Cross-modal transformer: exact attention maps, padding invariance, MLM and ITM heads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hardneg.models.crossmodal import CrossModalTransformer, last_layer_attention
from hardneg.models.crossmodal_config import CrossModalConfig
from hardneg.models.outputs import ImageOutput, TextOutput

TEXT_DIM, IMAGE_DIM = 12, 10


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, **overrides) -> CrossModalTransformer:
    kwargs = dict(
        text_dim=TEXT_DIM,
        image_dim=IMAGE_DIM,
        d_model=32,
        num_heads=4,
        num_layers=4,
        dropout=0.0,
        vocab_size=50,
        max_text_len=16,
        special_token_ids=(1, 2),
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return CrossModalTransformer(CrossModalConfig(**kwargs)).eval()


def random_text(batch: int, length: int, lengths: list[int], seed: int = 0) -> TextOutput:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, TEXT_DIM, generator=g)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    ids = torch.randint(3, 50, (batch, length), generator=g)
    ids[:, 0] = 1  # [CLS]
    ids[torch.arange(batch), torch.tensor(lengths) - 1] = 2  # [SEP]
    ids[~mask] = 0
    return TextOutput(tokens, mask, tokens.mean(1), ids)


def random_image(batch: int, grid: tuple[int, int] = (2, 3), seed: int = 1) -> ImageOutput:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, grid[0] * grid[1], IMAGE_DIM, generator=g)
    return ImageOutput(tokens, tokens.mean(1), grid)


def test_cross_attention_maps_have_shape_and_rows_sum_to_one_over_patches():
    model = tiny_model()
    text, image = random_text(3, 7, [7, 4, 2]), random_image(3)
    out = model(text, image)
    assert len(out.cross_attentions) == 4 and len(out.self_attentions) == 4
    for attn in out.cross_attentions:
        assert attn.shape == (3, 4, 7, 6)
        assert (attn >= 0).all()
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4, 7), atol=1e-6, rtol=0)
    last = last_layer_attention(out)
    assert last.shape == (3, 7, 6)
    per_head = out.cross_attentions[-1]
    torch.testing.assert_close(last, sum(per_head[:, h] for h in range(4)) / 4)
    assert out.hidden.shape == (3, 7, 32) and out.itm_logit.shape == (3,)


def _reference_first_layer_maps(model, text, image):
    """Loop-per-head re-derivation of layer 0's self- and cross-attention probabilities."""
    layer = model.layers[0]
    d, heads = model.config.d_model, model.config.num_heads
    dh = d // heads
    x = F.layer_norm(text.tokens @ model.text_in[0].weight.T + model.text_in[0].bias, (d,))
    x = x * model.text_in[1].weight + model.text_in[1].bias + model.text_pos[0, : x.shape[1]]
    mem = F.layer_norm(image.tokens @ model.image_in[0].weight.T + model.image_in[0].bias, (d,))
    mem = mem * model.image_in[1].weight + model.image_in[1].bias

    def attend(module, norm, q_in, kv_in, key_mask):
        q = norm(q_in) @ module.query.weight.T + module.query.bias
        k = kv_in @ module.key.weight.T + module.key.bias
        v = kv_in @ module.value.weight.T + module.value.bias
        maps, ctx = [], []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            scores = q[:, :, sl] @ k[:, :, sl].transpose(1, 2) / math.sqrt(dh)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
            p = torch.exp(scores - scores.amax(-1, keepdim=True))
            p = p / p.sum(-1, keepdim=True)
            maps.append(p)
            ctx.append(p @ v[:, :, sl])
        update = torch.cat(ctx, -1) @ module.out.weight.T + module.out.bias
        return torch.stack(maps, 1), update

    h_self = layer.norm_self(x)
    self_maps, update = attend(layer.self_attn, lambda t: t, h_self, h_self, text.mask)
    x = x + update
    cross_maps, _ = attend(layer.cross_attn, layer.norm_cross, x, mem, None)
    return self_maps, cross_maps


def test_attention_maps_equal_a_per_head_bruteforce_reference():
    model = tiny_model()
    text, image = random_text(2, 5, [5, 3]), random_image(2)
    out = model(text, image)
    ref_self, ref_cross = _reference_first_layer_maps(model, text, image)
    torch.testing.assert_close(out.self_attentions[0], ref_self, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.cross_attentions[0], ref_cross, atol=1e-5, rtol=1e-4)
    assert (out.self_attentions[0][1, :, :, 3:] == 0).all()  # padding keys get exactly 0


@pytest.mark.parametrize("itm_pool", ["cls", "mean"])
def test_padding_tokens_do_not_affect_real_token_outputs(itm_pool):
    model = tiny_model(itm_pool=itm_pool)
    lengths = [6, 3, 1]
    short, image = random_text(3, 6, lengths), random_image(3)
    extra = 4
    garbage = torch.randn(3, extra, TEXT_DIM) * 10
    long = TextOutput(
        torch.cat([short.tokens, garbage], 1),
        torch.cat([short.mask, torch.zeros(3, extra, dtype=torch.bool)], 1),
        short.pooled,
        torch.cat([short.input_ids, torch.zeros(3, extra, dtype=torch.long)], 1),
    )
    with torch.no_grad():
        a, b = model(short, image), model(long, image)
    real = short.mask
    torch.testing.assert_close(b.hidden[:, :6][real], a.hidden[real], atol=1e-5, rtol=1e-5)
    for attn_a, attn_b in zip(a.cross_attentions, b.cross_attentions):
        rows = real[:, None, :, None].expand_as(attn_a)
        torch.testing.assert_close(attn_b[:, :, :6][rows], attn_a[rows], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.itm_logit, a.itm_logit, atol=1e-5, rtol=1e-5)


def test_attention_map_gradient_matches_finite_differences():
    model = tiny_model(d_model=8, num_heads=2, num_layers=2).double()
    text, image = random_text(1, 3, [3]), random_image(1, grid=(2, 2))
    tokens = text.tokens.double().requires_grad_(True)
    patches = image.tokens.double().requires_grad_(True)

    def fn(t, p):
        return last_layer_attention(model(t, p, text_mask=text.mask))

    assert torch.autograd.gradcheck(fn, (tokens, patches), eps=1e-6, atol=1e-5)


def test_gradient_from_attention_loss_reaches_all_attention_parameters():
    model = tiny_model().train()
    text, image = random_text(2, 5, [5, 4]), random_image(2)
    out = model(text, image)
    weights = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(3))
    loss = sum((attn * weights).sum() for attn in out.cross_attentions)
    loss.backward()
    for k, layer in enumerate(model.layers):
        attention_params = [
            layer.cross_attn.query.weight,
            layer.cross_attn.key.weight,
            layer.self_attn.query.weight,
            layer.self_attn.key.weight,
            layer.self_attn.value.weight,
        ]
        if k < len(model.layers) - 1:  # later layers' queries depend on these
            attention_params += [layer.cross_attn.value.weight, layer.cross_attn.out.weight]
        for param in attention_params:
            assert param.grad is not None and param.grad.abs().sum() > 0
    assert model.image_in[0].weight.grad.abs().sum() > 0
    assert model.text_in[0].weight.grad.abs().sum() > 0


def test_mlm_loss_at_init_is_close_to_ln_vocab():
    vocab = 30522
    model = tiny_model(vocab_size=vocab)
    text = random_text(8, 10, [10] * 8)
    text.input_ids[:, 1:-1] = torch.randint(3, vocab, (8, 8), generator=torch.Generator())
    with torch.no_grad():
        loss = model.mlm_loss(text, random_image(8), torch.Generator().manual_seed(0))
    assert abs(loss.item() - math.log(vocab)) < 0.15


def test_mlm_loss_decreases_when_overfitting_one_tiny_batch():
    model = tiny_model(num_layers=2).train()
    text, image = random_text(8, 8, [8, 7, 6, 8, 5, 8, 4, 8]), random_image(8)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        loss = model.mlm_loss(text, image, torch.Generator().manual_seed(0), prob=0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_mask_picks_only_real_non_special_tokens_and_uses_the_mask_vector():
    model = tiny_model()
    lengths = torch.randint(2, 20, (200,), generator=torch.Generator().manual_seed(5))
    text = random_text(200, 20, lengths.tolist())
    chosen = model.choose_mask(text, prob=0.15, generator=torch.Generator().manual_seed(1))
    masked = model.apply_mask(text.tokens, chosen)
    maskable = text.mask & (text.input_ids > 2)
    assert not (chosen & ~maskable).any()
    assert chosen.any(1)[maskable.any(1)].all()  # every caption with a maskable token
    assert torch.equal(masked[chosen], model.mask_embedding.detach().expand(int(chosen.sum()), -1))
    assert torch.equal(masked[~chosen], text.tokens[~chosen])
    rate = chosen.sum() / maskable.sum()
    assert 0.13 < rate < 0.19
    again = model.choose_mask(text, prob=0.15, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, chosen)


def test_mlm_loss_is_the_mean_cross_entropy_of_the_chosen_tokens():
    model = tiny_model()
    text, image = random_text(3, 6, [6, 5, 4]), random_image(3)
    chosen = torch.zeros(3, 6, dtype=torch.bool)
    chosen[0, 2] = chosen[1, 1] = chosen[1, 3] = True
    out = model(model.apply_mask(text.tokens, chosen), image, text_mask=text.mask)
    logp = torch.log_softmax(model.mlm_logits(out.hidden).float(), dim=-1)
    picked = [(0, 2), (1, 1), (1, 3)]
    expected = -sum(logp[b, t, text.input_ids[b, t]] for b, t in picked) / 3
    loss = model.mlm_loss(text, image, chosen=chosen)
    assert torch.allclose(loss, expected, atol=1e-5)
    halved = model.mlm_loss(text, image, chosen=chosen, num_targets=6.0)
    assert torch.allclose(halved, expected / 2, atol=1e-5)


def test_mlm_loss_is_zero_not_nan_when_nothing_is_maskable():
    model = tiny_model()
    text = random_text(2, 2, [2, 2])  # only [CLS] and [SEP]
    loss = model.mlm_loss(text, random_image(2), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_itm_head_separates_matched_and_unmatched_pairs_on_a_toy():
    torch.manual_seed(0)
    classes, batch = 4, 32
    text_proto, image_proto = torch.randn(classes, TEXT_DIM), torch.randn(classes, IMAGE_DIM)

    def toy(seed: int):  # a caption matches an image iff both show the same class
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, classes, (batch,), generator=g)
        other = (labels + torch.randint(1, classes, (batch,), generator=g)) % classes
        noise_img = 0.3 * torch.randn(2 * batch, 4, IMAGE_DIM, generator=g)
        noise_txt = 0.3 * torch.randn(2 * batch, 3, TEXT_DIM, generator=g)
        images = image_proto[torch.cat([labels, other])][:, None] + noise_img
        texts = text_proto[labels.repeat(2)][:, None] + noise_txt
        return texts, images, torch.cat([torch.ones(batch), torch.zeros(batch)])

    model = tiny_model(num_layers=2).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(100):
        texts, images, target = toy(step)
        loss = F.binary_cross_entropy_with_logits(model(texts, images).itm_logit, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    texts, images, target = toy(1000)
    with torch.no_grad():
        logits = model.eval()(texts, images).itm_logit
    matched, unmatched = logits[target == 1], logits[target == 0]
    auc = (matched[:, None] > unmatched[None, :]).float().mean()
    assert auc > 0.9
    assert ((logits > 0).float() == target).float().mean() > 0.8


def test_tensor_and_output_inputs_give_the_same_result():
    model = tiny_model()
    text, image = random_text(2, 5, [5, 2]), random_image(2)
    a = model(text, image)
    b = model(text.tokens, image.tokens, text_mask=text.mask)
    torch.testing.assert_close(a.hidden, b.hidden)
    torch.testing.assert_close(a.itm_logit, b.itm_logit)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(d_model=30, num_heads=4), "divisible"),
        (dict(itm_pool="max"), "itm_pool"),
        (dict(mask_prob=0.0), "mask_prob"),
    ],
)
def test_bad_config_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrossModalConfig(**kwargs)


def test_bad_inputs_raise_value_errors_naming_the_fix():
    model = tiny_model()
    text, image = random_text(2, 5, [5, 2]), random_image(2)
    with pytest.raises(ValueError, match="text_dim"):
        model(torch.randn(2, 5, TEXT_DIM + 1), image)
    with pytest.raises(ValueError, match="image_dim"):
        model(text, torch.randn(2, 6, IMAGE_DIM + 1))
    with pytest.raises(ValueError, match="one image per caption"):
        model(text, random_image(3))
    with pytest.raises(ValueError, match="max_text_len"):
        model(torch.randn(2, 17, TEXT_DIM), image)
    with pytest.raises(ValueError, match="text_mask"):
        model(text.tokens, image, text_mask=text.mask.long())
    with pytest.raises(ValueError, match="prob"):
        model.choose_mask(text, prob=1.5)
    with pytest.raises(ValueError, match="chosen must be bool"):
        model.apply_mask(text.tokens, text.mask.long())


def test_same_seed_gives_identical_model_and_outputs():
    text, image = random_text(2, 5, [5, 3]), random_image(2)
    a, b = tiny_model(seed=7)(text, image), tiny_model(seed=7)(text, image)
    assert torch.equal(a.hidden, b.hidden) and torch.equal(a.itm_logit, b.itm_logit)


def test_corpus_vocabulary_mlm_is_the_full_softmax_restricted_to_the_corpus_columns():
    """``mlm_vocab``: the loss is −log of the softmax over the corpus ids only, written here from
    a full-vocabulary model whose other weights (and the corpus rows of its output layer) are
    shared; a target outside the corpus is refused."""
    text, image = random_text(4, 8, [8, 6, 5, 3]), random_image(4)
    full = tiny_model()
    vocab = tuple(sorted({int(i) for i in text.input_ids[text.mask]} - {1, 2}))
    small = tiny_model(mlm_vocab=vocab)
    state = full.state_dict()
    last = [k for k in state if k.startswith("mlm_head.3.")]
    small.load_state_dict({**state, **{k: state[k][list(vocab)] for k in last}}, strict=True)
    chosen = full.choose_mask(text, prob=0.5, generator=torch.Generator().manual_seed(3))
    out = full(full.apply_mask(text.tokens, chosen), image, text_mask=text.mask)
    logits = full.mlm_logits(out.hidden[chosen])[:, list(vocab)]
    targets = torch.tensor([vocab.index(int(i)) for i in text.input_ids[chosen]])
    expected = -logits.log_softmax(-1).gather(1, targets[:, None]).mean()
    torch.testing.assert_close(small.mlm_loss(text, image, chosen=chosen), expected)
    assert small.mlm_loss(text, image, chosen=chosen) < full.mlm_loss(text, image, chosen=chosen)
    with pytest.raises(ValueError, match="mlm_vocab"):
        tiny_model(mlm_vocab=vocab[1:]).mlm_loss(
            text, image, chosen=text.mask & (text.input_ids == vocab[0])
        )
    with pytest.raises(ValueError, match="mlm_vocab"):
        tiny_model(mlm_vocab=(3, 3))
