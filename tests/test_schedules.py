"""Sigma grids equal what diffusers' FlowMatchEulerDiscreteScheduler computes in the pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler

from amo_engine.schedules import calculate_shift, flow_match_sigmas

SD3_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


@pytest.mark.parametrize("steps", [4, 20, 28])
def test_sd3_grid_equals_diffusers(steps):
    sched = FlowMatchEulerDiscreteScheduler(**SD3_CONFIG)
    sched.set_timesteps(steps)  # what StableDiffusion3Pipeline does
    ours = flow_match_sigmas(sched.config, steps)
    assert ours == sched.sigmas.tolist()
    assert len(ours) == steps + 1 and ours[-1] == 0.0


@pytest.mark.parametrize("steps", [4, 20, 28])
@pytest.mark.parametrize("tokens", [64, 1024, 4096])
def test_flux_grid_equals_diffusers(steps, tokens):
    sched = FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG)
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)  # what FluxPipeline does
    ours = flow_match_sigmas(sched.config, steps, image_seq_len=tokens)
    assert ours == sched.sigmas.tolist()


@pytest.mark.parametrize("steps", [4, 28, 50])
def test_auraflow_grid_and_timestep_equal_its_pipeline(steps):
    import torch

    from amo_engine.model.families.auraflow import AURAFLOW

    sched = FlowMatchEulerDiscreteScheduler(shift=1.73)  # AuraFlow's scheduler config
    sched.set_timesteps(steps)  # what AuraFlowPipeline does (no sigmas passed)
    ours = AURAFLOW.sigmas(sched.config, steps, image_tokens=4096)
    assert ours == sched.sigmas.tolist()
    for sigma, t in zip(ours, sched.timesteps):  # the pipeline's timestep input: torch.tensor([t / 1000])
        assert torch.tensor([AURAFLOW.timestep(sigma, sched.config)]).item() == torch.tensor([t / 1000]).item()


def test_grid_errors():
    with pytest.raises(ValueError, match="image_seq_len"):
        flow_match_sigmas(FLUX_CONFIG, 4)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        flow_match_sigmas(SD3_CONFIG, 0)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        flow_match_sigmas({**SD3_CONFIG, "use_karras_sigmas": True}, 4)
