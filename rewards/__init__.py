"""Reward models, by name: plain classes with a `from_world` constructor and a class-level
`differentiable`, so a config can be checked against a method before any weights load."""
from rewards.compress import CompressReward
from rewards.digit import DigitReward
from rewards.gold import GoldReward

REWARDS = {
    "digit": DigitReward,
    "compress": CompressReward,
    "gold": GoldReward,
}
