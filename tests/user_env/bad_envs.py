"""Envs that break the goal-image contract, each in one way (tests of the errors users get)."""
import gymnasium as gym


def make_discrete():
    return gym.make("CartPole-v1", render_mode="rgb_array")  # Discrete actions, no pixels


def make_no_pixels():
    return gym.make("Pendulum-v1")  # Box actions, a state vector observation


def make_raises():
    raise RuntimeError("the robot is not connected")


def make_not_an_env():
    return 42
