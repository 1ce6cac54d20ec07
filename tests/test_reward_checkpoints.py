"""The checkpoint key mappings of the scale world's ImageReward and HPSv2, on tiny random-initialised models of the
real classes, offline and on CPU.

Every weight and tokenizer is written into tmp_path here and loaded back through the rewards' own loaders;
nothing is downloaded. The checkpoint key mappings are checked against reference forward passes written
below from the original code (BLIP's ViT and BERT with cross-attention, open_clip's ViT with torch's own
nn.MultiheadAttention), on synthetic state dicts that carry the published key names at tiny sizes.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_rewards import (
    EMBED,
    HEADS,
    IMAGE,
    LAYERS,
    MLP_WIDTH,
    PATCH,
    PROMPTS,
    WIDTH,
    assert_gradient_reaches_pixels,
    assert_scores,
    images,
)
from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig, CLIPModel

from models.tiny_pipelines import tiny_clip_config
from rewards.clip_score import ClipScoreReward
from rewards.hpsv2 import HPSv2Reward, open_clip_to_transformers
from rewards.image_preprocess import (
    clip_preprocess,
    hpsv2_preprocess,
)
from rewards.imagereward import SCORE_MEAN, SCORE_STD, ImageRewardReward, imagereward_state_dicts
from rewards.pickscore import PickScoreReward


def reference_score_mlp(head: dict, features: torch.Tensor) -> torch.Tensor:
    """The published head by hand: five affine maps in a row (the reference code's ReLUs are commented out)."""
    x = features
    for i in (0, 2, 4, 6, 7):
        x = x @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
    return x.squeeze(-1)


# --------------------------------------------------------------------------------------------------------
# ImageReward: BLIP ViT + BERT with cross-attention, from the published key names
# --------------------------------------------------------------------------------------------------------


def layer_norm_params(state, name, width, generator):
    state[f"{name}.weight"] = 1 + 0.1 * torch.randn(width, generator=generator)
    state[f"{name}.bias"] = 0.1 * torch.randn(width, generator=generator)


def linear_params(state, name, fan_out, fan_in, generator):
    state[f"{name}.weight"] = torch.randn(fan_out, fan_in, generator=generator) / math.sqrt(fan_in)
    state[f"{name}.bias"] = 0.1 * torch.randn(fan_out, generator=generator)


def published_imagereward_state_dict(vocab_size, text_positions=40):
    """ImageReward.pt's key names (ImageReward.blip = BLIP_Pretrain, ImageReward.mlp = MLP) at tiny sizes."""
    g = torch.Generator().manual_seed(3)
    state, v, t = {}, "blip.visual_encoder", "blip.text_encoder"
    state[f"{v}.cls_token"] = 0.5 * torch.randn(1, 1, WIDTH, generator=g)
    state[f"{v}.pos_embed"] = 0.5 * torch.randn(1, 1 + (IMAGE // PATCH) ** 2, WIDTH, generator=g)
    state[f"{v}.patch_embed.proj.weight"] = torch.randn(WIDTH, 3, PATCH, PATCH, generator=g) / PATCH
    state[f"{v}.patch_embed.proj.bias"] = 0.1 * torch.randn(WIDTH, generator=g)
    for i in range(LAYERS):
        layer_norm_params(state, f"{v}.blocks.{i}.norm1", WIDTH, g)
        linear_params(state, f"{v}.blocks.{i}.attn.qkv", 3 * WIDTH, WIDTH, g)
        linear_params(state, f"{v}.blocks.{i}.attn.proj", WIDTH, WIDTH, g)
        layer_norm_params(state, f"{v}.blocks.{i}.norm2", WIDTH, g)
        linear_params(state, f"{v}.blocks.{i}.mlp.fc1", MLP_WIDTH, WIDTH, g)
        linear_params(state, f"{v}.blocks.{i}.mlp.fc2", WIDTH, MLP_WIDTH, g)
    layer_norm_params(state, f"{v}.norm", WIDTH, g)
    state[f"{t}.embeddings.word_embeddings.weight"] = torch.randn(vocab_size, WIDTH, generator=g)
    state[f"{t}.embeddings.position_embeddings.weight"] = torch.randn(text_positions, WIDTH, generator=g)
    state[f"{t}.embeddings.position_ids"] = torch.arange(text_positions)[None]
    layer_norm_params(state, f"{t}.embeddings.LayerNorm", WIDTH, g)
    for i in range(LAYERS):
        p = f"{t}.encoder.layer.{i}"
        for block, kv_width in (("attention", WIDTH), ("crossattention", WIDTH)):
            linear_params(state, f"{p}.{block}.self.query", WIDTH, WIDTH, g)
            linear_params(state, f"{p}.{block}.self.key", WIDTH, kv_width, g)
            linear_params(state, f"{p}.{block}.self.value", WIDTH, kv_width, g)
            linear_params(state, f"{p}.{block}.output.dense", WIDTH, WIDTH, g)
            layer_norm_params(state, f"{p}.{block}.output.LayerNorm", WIDTH, g)
        linear_params(state, f"{p}.intermediate.dense", MLP_WIDTH, WIDTH, g)
        linear_params(state, f"{p}.output.dense", WIDTH, MLP_WIDTH, g)
        layer_norm_params(state, f"{p}.output.LayerNorm", WIDTH, g)
    linear_params(state, "blip.vision_proj", 8, WIDTH, g)
    linear_params(state, "blip.text_proj", 8, WIDTH, g)
    widths = (WIDTH, 24, 12, 8, 4, 1)
    for (fan_in, fan_out), i in zip(zip(widths[:-1], widths[1:]), (0, 2, 4, 6, 7)):
        linear_params(state, f"mlp.layers.{i}", fan_out, fan_in, g)
    return state


def attention(q, k, v, heads, additive_mask=None):
    """(B, Lq, W), (B, Lk, W), (B, Lk, W) -> (B, Lq, W): softmax(q k^T / sqrt(d) + mask) v per head."""
    b, lq, w = q.shape
    split = lambda x: x.view(b, x.shape[1], heads, w // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(w // heads)
    if additive_mask is not None:
        scores = scores + additive_mask
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, lq, w)


def reference_blip_vit(s, pixels, heads=HEADS):
    """salesforce/BLIP models/vit.py VisionTransformer.forward (eval), from the published names."""
    v = "blip.visual_encoder"
    ln = lambda x, n: F.layer_norm(x, (x.shape[-1],), s[f"{n}.weight"], s[f"{n}.bias"], eps=1e-6)  # noqa: E731
    lin = lambda x, n: x @ s[f"{n}.weight"].T + s[f"{n}.bias"]  # noqa: E731
    x = F.conv2d(pixels, s[f"{v}.patch_embed.proj.weight"], s[f"{v}.patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s[f"{v}.cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + s[f"{v}.pos_embed"]
    for i in range(LAYERS):
        p = f"{v}.blocks.{i}"
        h = ln(x, f"{p}.norm1")
        b, n, c = h.shape
        qkv = lin(h, f"{p}.attn.qkv").reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (qkv[0] @ qkv[1].transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
        x = x + lin((attn @ qkv[2]).transpose(1, 2).reshape(b, n, c), f"{p}.attn.proj")
        x = x + lin(F.gelu(lin(ln(x, f"{p}.norm2"), f"{p}.mlp.fc1")), f"{p}.mlp.fc2")
    return ln(x, f"{v}.norm")


def reference_blip_text_cls(s, input_ids, attention_mask, image_tokens, heads=HEADS):
    """BLIP med.py BertModel.forward in 'multimodal' mode (eval): the [CLS] output (B, W)."""
    t = "blip.text_encoder"
    ln = lambda x, n: F.layer_norm(x, (x.shape[-1],), s[f"{n}.weight"], s[f"{n}.bias"], eps=1e-12)  # noqa: E731
    lin = lambda x, n: x @ s[f"{n}.weight"].T + s[f"{n}.bias"]  # noqa: E731
    positions = torch.arange(input_ids.shape[1])
    x = ln(
        s[f"{t}.embeddings.word_embeddings.weight"][input_ids]
        + s[f"{t}.embeddings.position_embeddings.weight"][positions],
        f"{t}.embeddings.LayerNorm",
    )
    mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
    for i in range(LAYERS):
        p = f"{t}.encoder.layer.{i}"
        a = f"{p}.attention"
        h = attention(lin(x, f"{a}.self.query"), lin(x, f"{a}.self.key"), lin(x, f"{a}.self.value"), heads, mask)
        x = ln(lin(h, f"{a}.output.dense") + x, f"{a}.output.LayerNorm")
        c = f"{p}.crossattention"
        h = attention(
            lin(x, f"{c}.self.query"), lin(image_tokens, f"{c}.self.key"), lin(image_tokens, f"{c}.self.value"), heads
        )
        x = ln(lin(h, f"{c}.output.dense") + x, f"{c}.output.LayerNorm")
        x = ln(lin(F.gelu(lin(x, f"{p}.intermediate.dense")), f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    return x[:, 0]


def tiny_blip_configs(vocab_size):
    vision = BlipVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=MLP_WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        image_size=IMAGE,
        patch_size=PATCH,
        layer_norm_eps=1e-6,
    )
    text = BlipTextConfig(
        vocab_size=vocab_size,
        hidden_size=WIDTH,
        encoder_hidden_size=WIDTH,
        intermediate_size=MLP_WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=40,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        bos_token_id=2,
        sep_token_id=3,
        eos_token_id=3,
        is_decoder=True,
    )
    return vision, text


@pytest.fixture(scope="module")
def imagereward(tmp_path_factory, bert_dir):
    vocab_size = len(BertTokenizer.from_pretrained(bert_dir)) + 2  # + [DEC] and [ENC], as BLIP's tokenizer
    published = published_imagereward_state_dict(vocab_size)
    directory = tmp_path_factory.mktemp("imagereward")
    torch.save(published, directory / "ImageReward.pt")
    vision, text = tiny_blip_configs(vocab_size)
    reward = ImageRewardReward.from_pretrained(
        directory, tokenizer_source=bert_dir, vision_config=vision, text_config=text, min_vocab=0
    )
    return reward, published


def test_imagereward_mapping_reproduces_blip_and_the_normalised_head(imagereward):
    reward, published = imagereward
    x = images()
    scores = reward(x, PROMPTS)
    assert_scores(scores, 2)
    tokens = reward.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens["input_ids"].shape == (2, 35) and tokens["attention_mask"][0].sum() < 35  # padding is masked
    with torch.no_grad():
        image_tokens = reference_blip_vit(published, clip_preprocess(x, IMAGE))
        cls = reference_blip_text_cls(published, tokens["input_ids"], tokens["attention_mask"], image_tokens)
    head = {k[len("mlp.") :]: v for k, v in published.items() if k.startswith("mlp.")}
    expected = (reference_score_mlp(head, cls) - SCORE_MEAN) / SCORE_STD
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    assert_gradient_reaches_pixels(reward)


def test_imagereward_mapping_refuses_unknown_keys(bert_dir):
    published = published_imagereward_state_dict(70)
    vision, text, head = imagereward_state_dicts(published)
    assert "encoder.layers.1.self_attn.projection.weight" in vision and "embeddings.position_ids" not in text
    assert set(head) == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    with pytest.raises(ValueError, match="no counterpart.*blocks.0.adapter"):
        imagereward_state_dicts({**published, "blip.visual_encoder.blocks.0.adapter.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no counterpart.*itm_head"):
        imagereward_state_dicts({**published, "blip.itm_head.weight": torch.zeros(1)})


def test_imagereward_checkpoint_that_does_not_fit_the_config_fails_clearly(tmp_path, bert_dir):
    vocab_size = len(BertTokenizer.from_pretrained(bert_dir)) + 2
    torch.save(published_imagereward_state_dict(vocab_size), tmp_path / "ImageReward.pt")
    vision, text = tiny_blip_configs(vocab_size)
    vision.image_size = 64  # 64 patches + 1: the published pos_embed has 16 + 1
    with pytest.raises(ValueError, match="visual encoder weights do not fit"):
        ImageRewardReward.from_pretrained(
            tmp_path, tokenizer_source=bert_dir, vision_config=vision, text_config=text, min_vocab=0
        )


# --------------------------------------------------------------------------------------------------------
# HPSv2: open_clip ViT state dict onto transformers' CLIPModel
# --------------------------------------------------------------------------------------------------------


def published_open_clip_state_dict(vocab_size=190, context=77):
    """HPSv2's open_clip key names (model.state_dict() of open_clip.CLIP) at tiny sizes."""
    g = torch.Generator().manual_seed(4)
    state = {}
    for prefix in ("visual.transformer", "transformer"):
        for i in range(LAYERS):
            p = f"{prefix}.resblocks.{i}"
            layer_norm_params(state, f"{p}.ln_1", WIDTH, g)
            state[f"{p}.attn.in_proj_weight"] = torch.randn(3 * WIDTH, WIDTH, generator=g) / math.sqrt(WIDTH)
            state[f"{p}.attn.in_proj_bias"] = 0.1 * torch.randn(3 * WIDTH, generator=g)
            linear_params(state, f"{p}.attn.out_proj", WIDTH, WIDTH, g)
            layer_norm_params(state, f"{p}.ln_2", WIDTH, g)
            linear_params(state, f"{p}.mlp.c_fc", MLP_WIDTH, WIDTH, g)
            linear_params(state, f"{p}.mlp.c_proj", WIDTH, MLP_WIDTH, g)
    state["visual.conv1.weight"] = torch.randn(WIDTH, 3, PATCH, PATCH, generator=g) / PATCH
    state["visual.class_embedding"] = 0.5 * torch.randn(WIDTH, generator=g)
    state["visual.positional_embedding"] = 0.5 * torch.randn(1 + (IMAGE // PATCH) ** 2, WIDTH, generator=g)
    layer_norm_params(state, "visual.ln_pre", WIDTH, g)
    layer_norm_params(state, "visual.ln_post", WIDTH, g)
    state["visual.proj"] = torch.randn(WIDTH, EMBED, generator=g) / math.sqrt(WIDTH)
    state["token_embedding.weight"] = torch.randn(vocab_size, WIDTH, generator=g)
    state["positional_embedding"] = 0.5 * torch.randn(context, WIDTH, generator=g)
    layer_norm_params(state, "ln_final", WIDTH, g)
    state["text_projection"] = torch.randn(WIDTH, EMBED, generator=g) / math.sqrt(WIDTH)
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    state["attn_mask"] = torch.full((context, context), float("-inf")).triu(1)
    return state


def reference_open_clip_block(s, p, x, mask=None):
    """open_clip ResidualAttentionBlock.forward (no LayerScale), attention by torch's nn.MultiheadAttention."""
    ln = lambda x, n: F.layer_norm(x, (WIDTH,), s[f"{n}.weight"], s[f"{n}.bias"])  # noqa: E731
    mha = torch.nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
    mha.load_state_dict(
        {
            "in_proj_weight": s[f"{p}.attn.in_proj_weight"],
            "in_proj_bias": s[f"{p}.attn.in_proj_bias"],
            "out_proj.weight": s[f"{p}.attn.out_proj.weight"],
            "out_proj.bias": s[f"{p}.attn.out_proj.bias"],
        }
    )
    h = ln(x, f"{p}.ln_1")
    x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
    h = F.gelu(ln(x, f"{p}.ln_2") @ s[f"{p}.mlp.c_fc.weight"].T + s[f"{p}.mlp.c_fc.bias"])
    return x + h @ s[f"{p}.mlp.c_proj.weight"].T + s[f"{p}.mlp.c_proj.bias"]


def reference_open_clip_cosine(s, pixels, open_clip_tokens):
    """open_clip CLIP.encode_image / encode_text (normalised) and their cosine, as HPSv2's score."""
    ln = lambda x, n: F.layer_norm(x, (WIDTH,), s[f"{n}.weight"], s[f"{n}.bias"])  # noqa: E731
    x = F.conv2d(pixels, s["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([s["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1) + s["visual.positional_embedding"]
    x = ln(x, "visual.ln_pre")
    for i in range(LAYERS):
        x = reference_open_clip_block(s, f"visual.transformer.resblocks.{i}", x)
    image = ln(x[:, 0], "visual.ln_post") @ s["visual.proj"]
    t = s["token_embedding.weight"][open_clip_tokens] + s["positional_embedding"]
    causal = torch.full((t.shape[1], t.shape[1]), float("-inf")).triu(1)
    for i in range(LAYERS):
        t = reference_open_clip_block(s, f"transformer.resblocks.{i}", t, causal)
    t = ln(t, "ln_final")
    text = t[torch.arange(t.shape[0]), open_clip_tokens.argmax(-1)] @ s["text_projection"]
    return F.cosine_similarity(image, text)


def open_clip_tokenize(tokenizer, prompts, context=77):
    """open_clip's layout: [sot, ..., eot] then zeros up to the context length."""
    out = torch.zeros(len(prompts), context, dtype=torch.long)
    for row, ids in enumerate(tokenizer(prompts)["input_ids"]):
        out[row, : len(ids)] = torch.tensor(ids)
    return out


@pytest.fixture(scope="module")
def hpsv2(tmp_path_factory, clip_tokenizer_dir):
    published = published_open_clip_state_dict()
    directory = tmp_path_factory.mktemp("hpsv2")
    torch.save({"state_dict": published}, directory / "HPS_v2.1_compressed.pt")
    reward = HPSv2Reward.from_pretrained(
        directory, tokenizer_source=clip_tokenizer_dir, config=tiny_clip_config(), min_vocab=0
    )
    return reward, published


def test_hpsv2_mapping_reproduces_open_clip(hpsv2):
    reward, published = hpsv2
    x = images()
    scores = reward(x, PROMPTS)
    assert_scores(scores, 2)
    assert (scores.abs() <= 1).all() and reward.version.endswith("v2.1")
    with torch.no_grad():
        expected = reference_open_clip_cosine(
            published, hpsv2_preprocess(x, IMAGE), open_clip_tokenize(reward.tokenizer, PROMPTS)
        )
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)
    assert_gradient_reaches_pixels(reward)


def test_hpsv2_mapping_splits_qkv_and_transposes_projections():
    published = published_open_clip_state_dict()
    mapped = open_clip_to_transformers(published)
    qkv = published["visual.transformer.resblocks.1.attn.in_proj_weight"]
    torch.testing.assert_close(mapped["vision_model.encoder.layers.1.self_attn.k_proj.weight"], qkv[WIDTH : 2 * WIDTH])
    torch.testing.assert_close(mapped["text_projection.weight"], published["text_projection"].T)
    assert set(mapped) == set(CLIPModel(tiny_clip_config()).state_dict())


@pytest.mark.parametrize(
    "extra",
    [
        "visual.transformer.resblocks.0.ls_1.gamma",
        "visual.attn_pool.query",
        "text.transformer.embeddings.word_embeddings.weight",
    ],
)
def test_hpsv2_mapping_refuses_what_clipmodel_cannot_represent(extra):
    with pytest.raises(ValueError, match="cannot be mapped onto transformers' CLIPModel exactly"):
        open_clip_to_transformers({**published_open_clip_state_dict(), extra: torch.zeros(WIDTH)})


def test_each_clip_reward_tokenizes_as_its_original(clip_dir, pickscore_dir, clip_tokenizer_dir, hpsv2):
    """HPSv2 (open_clip) and CLIP score (OpenAI CLIP) clean a prompt before their BPE; PickScore's original loads the
    fast tokenizer through AutoProcessor, which cleans nothing (transformers 5's CLIPTokenizer is that one)."""
    x = images(2, 24, 40)  # not square
    hard = ["fish &amp;amp; chips", "a “red”  cat"]
    cleaned = ["fish & chips", 'a "red" cat']
    clip = ClipScoreReward.from_pretrained(clip_dir, min_vocab=0)
    torch.testing.assert_close(clip(x, hard), clip(x, cleaned), atol=0, rtol=0)
    torch.testing.assert_close(hpsv2[0](x, hard), hpsv2[0](x, cleaned), atol=0, rtol=0)
    pick = PickScoreReward.from_pretrained(pickscore_dir, tokenizer_source=clip_tokenizer_dir, min_vocab=0)
    assert pick.tokenizer.is_fast
    assert pick.tokenizer("fish &amp;amp; chips")["input_ids"] != pick.tokenizer("fish & chips")["input_ids"]
    assert (pick(x[:1], hard[:1]) != pick(x[:1], cleaned[:1])).all()


@pytest.mark.parametrize("name", ["clip_score", "imagereward", "hpsv2"])
def test_half_precision_backbones_still_return_float32_scores(
    name, clip_dir, imagereward, hpsv2, bert_dir, clip_tokenizer_dir, tmp_path
):
    if name == "clip_score":
        full, half = (ClipScoreReward.from_pretrained(clip_dir, min_vocab=0, dtype=d) for d in (None, torch.bfloat16))
    elif name == "imagereward":
        full = imagereward[0]
        torch.save(imagereward[1], tmp_path / "ImageReward.pt")
        vision, text = tiny_blip_configs(full.model.text.config.vocab_size)
        half = ImageRewardReward.from_pretrained(
            tmp_path,
            tokenizer_source=bert_dir,
            vision_config=vision,
            text_config=text,
            min_vocab=0,
            dtype=torch.bfloat16,
        )
    else:
        full = hpsv2[0]
        torch.save({"state_dict": hpsv2[1]}, tmp_path / "HPS_v2.1_compressed.pt")
        half = HPSv2Reward.from_pretrained(
            tmp_path, tokenizer_source=clip_tokenizer_dir, config=tiny_clip_config(), min_vocab=0, dtype=torch.bfloat16
        )
    scores = half(images(), PROMPTS)
    assert_scores(scores, 2)
    scale = full(images(), PROMPTS).abs().max().clamp(min=1)
    torch.testing.assert_close(scores / scale, full(images(), PROMPTS) / scale, atol=0.1, rtol=0)
