"""The scale-world reward models on tiny random-initialised models of the real classes, offline and on CPU.

Every weight and tokenizer is written into tmp_path here and loaded back through the rewards' own loaders;
nothing is downloaded. The checkpoint key mappings are checked against reference forward passes written
below from the original code (BLIP's ViT and BERT with cross-attention, open_clip's ViT with torch's own
nn.MultiheadAttention), on synthetic state dicts that carry the published key names at tiny sizes.
"""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig, CLIPModel, CLIPTokenizer

from models.tiny_pipelines import CLIP_EMBED, CLIP_IMAGE, CLIP_PATCH, CLIP_WIDTH, ascii_clip_tokenizer, tiny_clip_config
from rewards.aesthetic import HEAD_FILENAME, AestheticReward, ScoreMLP, head_state_dict, random_head
from rewards.clip_score import ClipScoreReward, load_tokenizer, openai_clip_text
from rewards.hpsv2 import HPSv2Reward, open_clip_to_transformers
from rewards.image_preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    blip_preprocess,
    center_crop,
    clip_preprocess,
    hpsv2_preprocess,
    resize_longer_side_and_pad,
    resize_shorter_side,
)
from rewards.imagereward import SCORE_MEAN, SCORE_STD, ImageRewardReward, imagereward_state_dicts
from rewards.jpeg import JpegCompressibilityReward
from rewards.pickscore import PickScoreReward

PROMPTS = ["a red cat", "two dogs on grass!"]
# the tiny CLIP's sizes (models/tiny_pipelines.py); the BLIP and open_clip fakes below use them too
WIDTH, LAYERS, HEADS, MLP_WIDTH, IMAGE, PATCH, EMBED = (
    CLIP_WIDTH,
    2,
    4,
    2 * CLIP_WIDTH,
    CLIP_IMAGE,
    CLIP_PATCH,
    CLIP_EMBED,
)
HEAD_WIDTHS = (EMBED, 24, 12, 8, 4, 1)
ABSENT = "rlhf-bench-tests/absent-model"


def images(batch=2, height=40, width=48, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------
# Tiny tokenizers and models, written to disk
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip_tokenizer")
    ascii_clip_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, clip_tokenizer_dir):
    """A CLIPModel.save_pretrained directory that also holds its tokenizer, as hub repositories do."""
    directory = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config()).save_pretrained(directory)
    CLIPTokenizer.from_pretrained(clip_tokenizer_dir).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pickscore_dir(tmp_path_factory):
    """Same tiny CLIP (seed 0) with logit_scale = log(50), so PickScore = 50 cos."""
    directory = tmp_path_factory.mktemp("pickscore")
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config(logit_scale=math.log(50.0))).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bert")
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "!",
        *letters,
        *("##" + c for c in letters),
        "red",
        "cat",
        "two",
        "dogs",
        "on",
        "grass",
    ]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return directory


def reference_score_mlp(head: dict, features: torch.Tensor) -> torch.Tensor:
    """The published head by hand: five affine maps in a row (the reference code's ReLUs are commented out)."""
    x = features
    for i in (0, 2, 4, 6, 7):
        x = x @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
    return x.squeeze(-1)


def random_tiny_head(generator, prefix=""):
    return random_head(generator, HEAD_WIDTHS, prefix)


def assert_scores(scores, batch):
    assert scores.shape == (batch,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()


def assert_gradient_reaches_pixels(reward):
    pixels = images().requires_grad_()
    reward(pixels, PROMPTS).sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------------


def test_clip_preprocess_resizes_the_shorter_side_crops_the_center_and_normalises():
    x = images(1, 32, 64)
    out = clip_preprocess(x, 32)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    # already 32 on the shorter side: no resampling, just the central 32 columns, normalised
    torch.testing.assert_close(out, (x[..., 16:48] - mean) / std)
    assert resize_shorter_side(images(1, 50, 100), 32).shape[-2:] == (32, 64)
    assert center_crop(images(1, 37, 40), 32).shape[-2:] == (32, 32)
    assert blip_preprocess(images(1, 30, 60), 16).shape == (1, 3, 16, 16)


def test_resize_matches_pil_bicubic_on_a_downscale():
    array = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    pil = np.asarray(Image.fromarray(array).resize((32, 32), Image.BICUBIC)).astype(np.float32) / 255
    ours = resize_shorter_side(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255, 32)
    assert np.abs(ours[0].permute(1, 2, 0).numpy() - pil).mean() < 2 / 255


def test_hpsv2_preprocess_resizes_the_longer_side_and_pads_to_a_square_with_black():
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    black = (-mean / std)[:, 0, 0]
    # 2 x 4 at size 4: the longer side is 4 already, so no resampling; one black row above, one below
    x = images(1, 2, 4)
    out = hpsv2_preprocess(x, 4)[0]
    torch.testing.assert_close(out[:, 1:3], (x[0] - mean) / std)
    for row in (0, 3):
        torch.testing.assert_close(out[:, row], black[:, None].expand(3, 4))
    # 3 x 6 of one grey at size 4: 3 x 6 -> round(3 * 4 / 6) = 2 rows x 4, then a black row above and below
    grey = hpsv2_preprocess(torch.full((1, 3, 3, 6), 0.5), 4)[0]
    torch.testing.assert_close(grey[:, 1:3], ((0.5 - mean) / std).expand(3, 2, 4))
    torch.testing.assert_close(grey[:, 0], black[:, None].expand(3, 4))
    # 7 x 2 at size 4: 1 column (round(8 / 7)), three of padding: the left gets the smaller half, one
    tall = resize_longer_side_and_pad(torch.full((1, 3, 7, 2), 0.5), 4)[0, 0]
    torch.testing.assert_close(tall[:, 1], torch.full((4,), 0.5))
    assert tall[:, [0, 2, 3]].abs().sum() == 0
    # 5 x 8 at size 4: round(2.5) = 2 rows, Python's rounding to even as the original's
    column = resize_longer_side_and_pad(torch.full((1, 3, 5, 8), 0.5), 4)[0, 0, :, 0]
    torch.testing.assert_close(column, torch.tensor([0, 0.5, 0.5, 0]))
    # not clamped: bicubic overshoots at a sharp edge, and the original keeps the overshoot
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 1.0
    resized = resize_longer_side_and_pad(edge, 4)
    assert resized.shape == (1, 3, 4, 4) and resized.max() > 1 and resized.min() < 0


@pytest.mark.parametrize(
    "prompt, cleaned",
    [
        ("a “curly” cat", 'a "curly" cat'),  # quotes uncurled
        ("fish &amp;amp; chips", "fish & chips"),  # entities unescaped, twice
        ("<b>fish &amp;amp; chips</b>", "<b>fish & chips</b>"),  # with a tag, ftfy leaves entities to the unescaping
        ("ＲＥＤ cat", "RED cat"),  # full-width letters
        ("cafÃ© au lait", "café au lait"),  # mojibake repaired
        ("  two\n\tdogs  ", "two dogs"),  # whitespace collapsed and stripped
        ("a cat 🐱", "a cat 🐱"),  # emoji kept
    ],
)
def test_openai_clip_text_cleans_a_prompt_as_open_clip_does(prompt, cleaned):
    assert openai_clip_text(prompt) == cleaned


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


@pytest.mark.parametrize(
    "bad", [torch.rand(2, 1, 8, 8), torch.rand(3, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)]
)
def test_preprocess_rejects_bad_images(bad):
    with pytest.raises(ValueError, match="images must"):
        clip_preprocess(bad, 8)


# --------------------------------------------------------------------------------------------------------
# CLIP score and PickScore (transformers checkpoints, no key mapping)
# --------------------------------------------------------------------------------------------------------


def test_clip_score_is_100_cos_with_gradients_to_pixels(clip_dir):
    reward = ClipScoreReward.from_pretrained(clip_dir, min_vocab=0)
    x = images()
    scores = reward(x, PROMPTS)
    assert_scores(scores, 2)
    model = CLIPModel.from_pretrained(clip_dir)
    tokens = reward.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=clip_preprocess(x, IMAGE)).pooler_output)
        text = model.text_projection(model.text_model(**tokens).pooler_output)
    torch.testing.assert_close(scores, 100 * F.cosine_similarity(image, text), atol=1e-4, rtol=1e-4)
    assert reward.differentiable and reward.name == "clip_score"
    assert_gradient_reaches_pixels(reward)


def test_pickscore_scales_the_cosine_by_the_learned_logit_scale(clip_dir, pickscore_dir, clip_tokenizer_dir):
    pick = PickScoreReward.from_pretrained(pickscore_dir, tokenizer_source=clip_tokenizer_dir, min_vocab=0)
    clip = ClipScoreReward.from_pretrained(clip_dir, min_vocab=0)  # the same weights, scale 100
    x = images()
    scores = pick(x, PROMPTS)
    assert_scores(scores, 2)
    torch.testing.assert_close(scores, clip(x, PROMPTS) / 2, atol=1e-4, rtol=1e-4)
    assert_gradient_reaches_pixels(pick)


# --------------------------------------------------------------------------------------------------------
# LAION aesthetic predictor v2
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aesthetic_head_file(tmp_path_factory):
    head = random_tiny_head(torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("aesthetic") / HEAD_FILENAME
    torch.save(head, path)
    return path


def test_aesthetic_head_mapping_reproduces_the_published_mlp(clip_dir, aesthetic_head_file):
    reward = AestheticReward.from_pretrained(clip_dir, head=aesthetic_head_file.parent)
    x = images()
    scores = reward(x, PROMPTS)
    assert_scores(scores, 2)
    head = torch.load(aesthetic_head_file, weights_only=True)
    model = CLIPModel.from_pretrained(clip_dir)
    with torch.no_grad():
        embedding = model.visual_projection(model.vision_model(pixel_values=clip_preprocess(x, IMAGE)).pooler_output)
    torch.testing.assert_close(scores, reference_score_mlp(head, F.normalize(embedding, dim=-1)), atol=1e-5, rtol=1e-5)
    assert_gradient_reaches_pixels(reward)


def test_aesthetic_head_loads_from_the_file_itself(clip_dir, aesthetic_head_file):
    by_file = AestheticReward.from_pretrained(clip_dir, head=aesthetic_head_file)
    by_dir = AestheticReward.from_pretrained(clip_dir, head=aesthetic_head_file.parent)
    torch.testing.assert_close(by_file(images(), PROMPTS), by_dir(images(), PROMPTS))


def test_head_mapping_refuses_missing_or_extra_keys():
    head = random_tiny_head(torch.Generator().manual_seed(2))
    assert isinstance(ScoreMLP.from_state_dict(head_state_dict(head)), ScoreMLP)
    with pytest.raises(ValueError, match="missing.*layers.7.bias"):
        head_state_dict({k: v for k, v in head.items() if k != "layers.7.bias"})
    with pytest.raises(ValueError, match="unexpected.*layers.8.weight"):
        head_state_dict({**head, "layers.8.weight": torch.zeros(1, 1)})


def test_aesthetic_without_a_head_says_where_to_get_it(clip_dir):
    with pytest.raises(ValueError, match="sac\\+logos\\+ava1-l14-linearMSE.pth.*improved-aesthetic-predictor"):
        AestheticReward.from_pretrained(clip_dir)


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


# --------------------------------------------------------------------------------------------------------
# JPEG compressibility
# --------------------------------------------------------------------------------------------------------


def test_jpeg_is_minus_kilobytes_at_quality_95_and_prefers_flat_images():
    reward = JpegCompressibilityReward()
    x = torch.cat([torch.full((1, 3, 64, 64), 0.5), images(1, 64, 64)])
    scores = reward(x, PROMPTS)
    assert_scores(scores, 2)
    buffer = io.BytesIO()
    Image.fromarray((x[1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, "JPEG", quality=95)
    assert scores[1].item() == pytest.approx(-len(buffer.getvalue()) / 1000)
    assert scores[0] > scores[1] and not reward.differentiable


# --------------------------------------------------------------------------------------------------------
# Loading: missing weights fail fast, tiny tokenizers are refused
# --------------------------------------------------------------------------------------------------------

LOADERS = {
    "clip_score": lambda tok, head: ClipScoreReward.from_pretrained(ABSENT),
    "pickscore": lambda tok, head: PickScoreReward.from_pretrained(ABSENT, tokenizer_source=tok, min_vocab=0),
    "aesthetic": lambda tok, head: AestheticReward.from_pretrained(ABSENT, head=head),
    "imagereward": lambda tok, head: ImageRewardReward.from_pretrained(ABSENT),
    "hpsv2": lambda tok, head: HPSv2Reward.from_pretrained(ABSENT),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_hub_id_missing_from_the_cache_fails_fast_saying_how_to_get_it(name, clip_tokenizer_dir, aesthetic_head_file):
    with pytest.raises(ValueError, match=f"not in the local Hugging Face cache.*huggingface-cli download {ABSENT}"):
        LOADERS[name](clip_tokenizer_dir, aesthetic_head_file)


def test_missing_local_path_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        ClipScoreReward.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no HPS_v2.1_compressed.pt"):
        HPSv2Reward.from_pretrained(tmp_path)


def test_tiny_tokenizers_are_refused_unless_allowed(clip_dir, tmp_path):
    with pytest.raises(ValueError, match="only 190 tokens.*min_vocab"):
        ClipScoreReward.from_pretrained(clip_dir)
    # an empty directory: transformers returns a 2-token CLIPTokenizer instead of failing
    with pytest.raises(ValueError, match="only 2 tokens"):
        load_tokenizer(CLIPTokenizer, tmp_path, "CLIP tokenizer")
    assert len(load_tokenizer(CLIPTokenizer, clip_dir, "CLIP tokenizer", min_vocab=100)) == 190


def test_published_architectures_match_the_reference_code():
    """The full-size configs, as ImageReward's create_vit('large', 224) + med_config.json and open_clip's
    ViT-H-14.json define them (too large to instantiate in a fast test)."""
    from rewards.hpsv2 import vit_h_14_config
    from rewards.imagereward import imagereward_text_config, imagereward_vision_config

    vision, text = imagereward_vision_config(), imagereward_text_config()
    assert (
        vision.hidden_size,
        vision.num_hidden_layers,
        vision.num_attention_heads,
        vision.intermediate_size,
        vision.image_size,
        vision.patch_size,
        vision.layer_norm_eps,
    ) == (1024, 24, 16, 4096, 224, 16, 1e-6)
    assert (
        text.vocab_size,
        text.hidden_size,
        text.num_hidden_layers,
        text.num_attention_heads,
        text.intermediate_size,
        text.encoder_hidden_size,
        text.layer_norm_eps,
    ) == (30524, 768, 12, 12, 3072, 1024, 1e-12)
    h14 = vit_h_14_config()
    assert (
        h14.vision_config.hidden_size,
        h14.vision_config.num_hidden_layers,
        h14.vision_config.num_attention_heads,
        h14.vision_config.patch_size,
        h14.text_config.hidden_size,
        h14.text_config.num_hidden_layers,
        h14.projection_dim,
        h14.vision_config.hidden_act,
    ) == (1280, 32, 16, 14, 1024, 24, 1024, "gelu")


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


def test_rewards_check_their_inputs(clip_dir):
    reward = ClipScoreReward.from_pretrained(clip_dir, min_vocab=0)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        reward(images(), PROMPTS[:1])
    with pytest.raises(ValueError, match="shape \\(B, 3, H, W\\)"):
        reward(torch.rand(2, 1, 8, 8), PROMPTS)
