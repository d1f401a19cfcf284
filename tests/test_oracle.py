"""OracleWorldModel: imagined frames are exactly what the real env would show."""
import gymnasium as gym
import numpy as np
import pytest
import torch

import sfplan.envs  # noqa: F401
from sfplan.world_model.base import GoalVideoWorldModel, MemoryWorldModel, WorldModel
from sfplan.world_model.oracle import OracleWorldModel, imagined_steps


@pytest.fixture(scope="module")
def reacher():
    env = gym.make("sfplan/Reacher-v0", image_size=32)
    yield env
    env.close()


def test_imagined_steps():
    assert imagined_steps(10, 0) == [10]
    assert imagined_steps(10, 5) == [5, 10]
    assert imagined_steps(10, 4) == [4, 8, 10]


def test_oracle_matches_real_rollout(reacher):
    wm = OracleWorldModel("sfplan/Reacher-v0", {"image_size": 32}, frame_stride=2, device="cpu")
    assert isinstance(wm, WorldModel)
    assert not isinstance(wm, (MemoryWorldModel, GoalVideoWorldModel))  # the runner and video_plan tell it apart
    obs, info = reacher.reset(seed=3)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, size=(1, 3, 4, 2)).astype(np.float32)  # (B=1, N=3, H=4, A=2)
    state = wm.encode(obs["pixels"][None, None], sim_state=info["state"][None])
    assert state.features.shape == (1, 3, 32, 32)
    im = wm.imagine(state, torch.from_numpy(acts))
    assert im.features.shape == (1, 3, 2, 3, 32, 32)
    assert im.steps.tolist() == [2, 4]
    # Candidate 1, replayed in the real env from the same state, gives the same frames.
    real = []
    for t in range(4):
        obs, *_ = reacher.step(acts[0, 1, t])
        real.append(obs["pixels"])
    decoded = wm.decode(im.features[0, 1]).numpy()  # (K, H, W, 3)
    np.testing.assert_array_equal(decoded[0], real[1])
    np.testing.assert_array_equal(decoded[1], real[3])
    # Different candidates really differ.
    assert not torch.equal(im.features[0, 0], im.features[0, 2])
    assert wm.imagined_frames == 12
    wm.close()


def test_oracle_needs_sim_state():
    wm = OracleWorldModel("sfplan/Reacher-v0", {"image_size": 32}, device="cpu")
    state = wm.encode(np.zeros((1, 1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="sim_state"):
        wm.imagine(state, torch.zeros(1, 2, 3, 2))
    wm.close()
