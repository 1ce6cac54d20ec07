"""The shared reward models, by name: plain classes with a `from_world` constructor and a class-level
`differentiable`, so a config can be checked against a method before any weights load. A world offers a subset
(worlds/: `WorldEntry.rewards`), and defines those read from its own networks and prompt language itself (the
digits worlds digit and gold, the scenes worlds geneval and ocr: `WorldEntry.reward_classes`); worlds.REWARDS holds
them all. An installed package adds its own through the entry-point group `rlhf_bench.rewards`
(models/installed.py)."""

from models.installed import installed_entries
from rewards.aesthetic import AestheticReward
from rewards.base import Reward
from rewards.clip_score import ClipScoreReward
from rewards.compress import CompressReward
from rewards.hpsv2 import HPSv2Reward
from rewards.imagereward import ImageRewardReward
from rewards.jpeg import JpegCompressibilityReward
from rewards.pickscore import PickScoreReward

REWARDS: dict[str, type[Reward]] = {
    "compress": CompressReward,
    "aesthetic": AestheticReward,
    "pickscore": PickScoreReward,
    "clip_score": ClipScoreReward,
    "imagereward": ImageRewardReward,
    "hpsv2": HPSv2Reward,
    "jpeg": JpegCompressibilityReward,
}
REWARDS.update(
    installed_entries(
        "rlhf_bench.rewards",
        REWARDS,
        "a Reward class (rewards/base.py: name, version, differentiable, higher_is_better, from_world)",
        lambda entry: (
            isinstance(entry, type)
            and all(hasattr(entry, a) for a in ("name", "version", "differentiable", "higher_is_better", "from_world"))
        ),
    )
)
