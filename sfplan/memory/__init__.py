"""Episodic memory for the learned world model: SlowFast-VGen's fast learner (Temp-LoRA).

``TempLoRAMemory`` keeps a LoRA adapter on the video diffusion model and trains it, during
a rollout, on the frames seen so far (action-free, whole clip noised), so later chunks can
recall earlier ones. Attach it with ``SlowFastWorldModel.attach_memory(TempLoRAConfig())``.
"""
from sfplan.memory.base import Memory
from sfplan.memory.temp_lora import ADAPTER_NAME, TempLoRAConfig, TempLoRAMemory, base_state_dict

__all__ = ["ADAPTER_NAME", "Memory", "TempLoRAConfig", "TempLoRAMemory", "base_state_dict"]
