"""The policy-gradient contract (methods/toolkit/policy_gradient.py): options declared once, the typed update over
(B,) or (B, N) advantages, and the parameters a data-parallel step keeps identical."""

import dataclasses

import pytest
import torch
from test_methods import flat_parameters, make

from bench.catalog import field_docs
from methods import METHODS
from methods.toolkit.policy_gradient import PolicyGradientOptions, PPOOptions, ppo_epochs
from methods.trainer import SingleProcess
from models.sampler import Sampler

POLICY_GRADIENT = sorted(name for name, method in METHODS.items() if issubclass(method.Config, PolicyGradientOptions))
SHARED = {f.name: f for f in dataclasses.fields(PPOOptions)}


def test_the_chain_policy_gradient_methods_are_on_the_shared_options():
    assert POLICY_GRADIENT == [
        "dance_grpo",
        "ddpo",
        "flow_dppo",
        "flow_grpo",
        "gardo",
        "gdpo",
        "mix_grpo",
        "pref_grpo",
        "sas",
        "tempflow_grpo",
    ]


@pytest.mark.parametrize("name", POLICY_GRADIENT)
def test_a_method_redeclares_a_shared_option_only_to_change_it(name):
    """A shared option is written once: a method's Config restates one only with another default, type, range or
    `added` flag; the help still finds a docstring for every option."""
    config = METHODS[name].Config
    docs = field_docs(config)
    for f in dataclasses.fields(config):
        assert docs.get(f.name), f"{name}.{f.name} has no docstring"
        if f.name in SHARED and f.name in config.__dict__.get("__annotations__", {}):
            base = SHARED[f.name]
            assert (f.default, f.type, f.metadata) != (base.default, base.type, base.metadata), f"{name}.{f.name}"


def test_the_kl_weight_is_the_option_each_method_names_it_by():
    assert METHODS["flow_grpo"].Config().kl_weight == 0.04 and METHODS["ddpo"].Config(kl_coef=0.5).kl_weight == 0.5
    assert METHODS["sas"].Config(beta=0.3).kl_weight == 0.3
    with pytest.raises(TypeError):
        PolicyGradientOptions()  # abstract: a method's Config says which option weighs the KL


def trainer_and_chain(world, **overrides):
    trainer, _ = make(world, "flow_grpo", "flow", **overrides)
    with torch.no_grad():
        prompts = trainer.prompt_batch(2, 3)
        trajectory = trainer.policy.sample(prompts, 4, torch.Generator().manual_seed(3), Sampler("flow-sde", 0.7))
    return trainer, trajectory


def test_per_step_advantages_equal_to_the_chains_train_as_the_chains(tiny_world):
    """(B, N) advantages whose columns all hold the chain's (B,) ones give the same update, bit for bit; columns that
    differ give another one."""
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.3, -1.3])
    updates = []
    for per_step in (advantages, advantages[:, None].repeat(1, 4), advantages[:, None] * torch.arange(4.0)):
        trainer, trajectory = trainer_and_chain(tiny_world)
        before = flat_parameters(trainer)
        ppo_epochs(trainer, trajectory, per_step)
        updates.append(flat_parameters(trainer) - before)
    assert updates[0].abs().sum() > 0
    assert torch.equal(updates[0], updates[1]) and not torch.equal(updates[0], updates[2])


def test_every_step_in_the_chains_order_draws_nothing_beyond_the_minibatches(tiny_world):
    """step_fraction=None trains each chain's stochastic steps as they come: the trainer's generator moves by each
    epoch's minibatch permutation alone (a fraction, even 1.0, draws the steps' order too)."""
    for fraction, draws_steps in ((None, False), (1.0, True)):
        trainer, trajectory = trainer_and_chain(tiny_world, inner_epochs=2)
        expected = torch.Generator().manual_seed(0)
        expected.set_state(trainer.generator.get_state())
        ppo_epochs(trainer, trajectory, torch.ones(6), step_fraction=fraction, summed=fraction is None)
        for _ in range(2):
            torch.randperm(6, generator=expected)
        assert torch.equal(trainer.generator.get_state(), expected.get_state()) != draws_steps


class RecordingParallel(SingleProcess):
    """One process that records which parameters each gradient average covers."""

    def __init__(self):
        self.averaged: list[set[int]] = []

    def average_gradients(self, parameters):
        self.averaged.append({id(p) for p in parameters})


def test_a_data_parallel_step_averages_every_parameter_the_method_trains(tiny_world):
    """A parameter a method trains beside the policy (a value network in its optimizer) is averaged over processes
    with the policy's: otherwise each process's copy would drift apart."""
    trainer, _ = make(tiny_world, "flow_grpo", "flow")
    value = torch.nn.Linear(4, 1)
    assert trainer.optimizer is not None
    trainer.optimizer.add_param_group({"params": list(value.parameters())})
    parallel = RecordingParallel()
    trainer.distribute(parallel)
    trainer.step()
    everything = {id(p) for p in trainer.policy.trainable_parameters()} | {id(p) for p in value.parameters()}
    assert parallel.averaged and all(averaged == everything for averaged in parallel.averaged)
