"""Long videos imagined by the learned world model from real context frames and actions:
what ``sfplan generate`` writes and what training samples to watch progress (frames in and
out as uint8 arrays, not latents)."""
from __future__ import annotations

import time

import numpy as np
import torch

from sfplan.errors import UserError


@torch.no_grad()
def imagine_video(wm, context: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Imagine len(actions) steps after the context frames.

    wm: SlowFastWorldModel with ``return_frames="all"``. context: (T, H, W, 3) uint8 real
    frames (the last is "now"; the model keeps its last ``context_frames``). actions:
    (K, A); ``actions[k]`` yields imagined frame k. Returns (K, H, W, 3) uint8."""
    if wm.config.return_frames != "all":
        raise ValueError("imagine_video needs a world model with return_frames='all'")
    state = wm.encode(np.asarray(context)[None])  # context (1, T', C, h, w)
    acts = torch.as_tensor(np.asarray(actions, np.float32))[None, None]  # (1, 1, K, A)
    im = wm.imagine(state, acts)  # features (1, 1, K, C, h, w)
    return wm.decode(im.features[0, 0]).numpy()  # (K, H, W, 3)


@torch.no_grad()
def imagine_video_with_memory(wm, context: np.ndarray, actions: np.ndarray,
                        truth: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """``imagine_video`` chunk by chunk, writing each chunk into ``wm.memory`` (Temp-LoRA) before
    the next one is imagined. The memory is taken as it is (``wm.reset_memory()`` first
    for a fresh episode).

    What is written follows ``wm.memory.config.write``: ``generated`` (the imagined chunk,
    as in the paper) or ``real`` (the ground-truth frames ``truth`` (K, H, W, 3) of the
    chunk). The first write carries the encoded real context in front of the chunk; later
    writes take their clean context from the memory's buffer. The last chunk is not written
    (nothing imagines after it). The noise is drawn from one generator seeded with
    ``noise_seed`` across the chunks, so with the memory disabled (or never written) the
    frames equal ``imagine_video``'s. Returns (frames (K, H, W, 3) uint8, info: per-write logs
    and times)."""
    from sfplan.world_model.base import WorldState

    mem = wm.memory
    if mem is None:
        raise ValueError("imagine_video_with_memory needs a world model with a memory (wm.attach_memory(...))")
    if wm.config.return_frames != "all":
        raise ValueError("imagine_video_with_memory needs a world model with return_frames='all'")
    mode = mem.config.write
    if mode == "real" and truth is None:
        raise UserError("memory.write=real writes the ground-truth frames: start from a dataset episode "
                        "(data=<dataset> episode=K), or use memory.write=generated")
    acts = torch.as_tensor(np.asarray(actions, np.float32))  # (K, A)
    K = acts.shape[0]
    state = wm.encode(np.asarray(context)[None])  # context (1, T', C, h, w)
    mem.prime(state.context[0])  # the real context: in front of the first written chunk
    real = wm.vae.encode(np.asarray(truth)) if mode == "real" else None  # (K, C, h, w)
    gen = torch.Generator("cpu").manual_seed(int(wm.config.noise_seed))
    lats, writes = [], []
    t_imagine = 0.0
    for s in range(0, K, wm.chunk_size):
        k = min(wm.chunk_size, K - s)
        t0 = time.perf_counter()
        z = wm.imagine(state, acts[None, None, s: s + k], generator=gen).features[0, 0]  # (k, C, h, w)
        t_imagine += time.perf_counter() - t0
        lats.append(z)
        if s + k < K:  # the chunk and its actions; the memory puts the frame it holds last in front
            new = z if mode == "generated" else real[s: s + k].to(z.device)
            writes.append(mem.write(new, actions=acts[s: s + k]))
        nxt = torch.cat([state.context.to(z.device), z[None]], dim=1)[:, -wm.context_frames:]  # (1, T', C, h, w)
        state = WorldState(features=nxt[:, -1], context=nxt)
    frames = wm.decode(torch.cat(lats)).numpy()  # (K, H, W, 3)
    wt = [w["time_s"] for w in writes]
    info = {"write": mode, "writes": len(writes), "write_s_total": float(sum(wt)),
            "write_s_per_chunk": float(np.mean(wt)) if wt else 0.0, "imagine_s": t_imagine,
            "write_loss_first": [w["loss_first"] for w in writes], "write_loss_last": [w["loss_last"] for w in writes],
            "lora_parameters": mem.num_parameters, "state_bytes": mem.state_bytes()}
    return frames, info
