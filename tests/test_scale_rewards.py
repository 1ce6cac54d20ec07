"""The scale-world reward models on tiny random-initialised models of the real classes, offline and on CPU: their
preprocessing, CLIP score, PickScore, the aesthetic head, JPEG and loading (the checkpoint mappings of ImageReward
and HPSv2: tests/test_reward_checkpoints.py).

Every weight and tokenizer is written into tmp_path here and loaded back through the rewards' own loaders;
nothing is downloaded. The checkpoint key mappings are checked against reference forward passes written
below from the original code (BLIP's ViT and BERT with cross-attention, open_clip's ViT with torch's own
nn.MultiheadAttention), on synthetic state dicts that carry the published key names at tiny sizes.
"""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_rewards import (
    ABSENT,
    HEAD_WIDTHS,
    IMAGE,
    PROMPTS,
    assert_gradient_reaches_pixels,
    assert_scores,
    images,
)
from transformers import CLIPModel, CLIPTokenizer

from rewards.aesthetic import HEAD_FILENAME, AestheticReward, ScoreMLP, head_state_dict, random_head
from rewards.clip_score import ClipScoreReward, load_tokenizer, openai_clip_text
from rewards.hpsv2 import HPSv2Reward
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
from rewards.imagereward import ImageRewardReward
from rewards.jpeg import JpegCompressibilityReward
from rewards.pickscore import PickScoreReward


def reference_score_mlp(head: dict, features: torch.Tensor) -> torch.Tensor:
    """The published head by hand: five affine maps in a row (the reference code's ReLUs are commented out)."""
    x = features
    for i in (0, 2, 4, 6, 7):
        x = x @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
    return x.squeeze(-1)


def random_tiny_head(generator, prefix=""):
    return random_head(generator, HEAD_WIDTHS, prefix)


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


def test_rewards_check_their_inputs(clip_dir):
    reward = ClipScoreReward.from_pretrained(clip_dir, min_vocab=0)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        reward(images(), PROMPTS[:1])
    with pytest.raises(ValueError, match="shape \\(B, 3, H, W\\)"):
        reward(torch.rand(2, 1, 8, 8), PROMPTS)
