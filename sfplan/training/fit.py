"""`sfplan fit`: from an env to a planning world model in one command, with one recipe.

    sfplan fit env.id=my_tasks:make_puck out=models/puck minutes=30

Stages, each sized from the budget (``configs/fit.yaml`` ``shares``) and resumable::

    collect   a pilot measures the env's speed -> episodes      OUT/work/data
    recipe    settings derived from the data (fg_weight, ...)     OUT/fit.json
    vae       calibrated steps/s x its share -> steps (and a time limit of 1.15x the share)   OUT/work/runs/vae
    dynamics  (the slow learner)                                 OUT/work/runs/dynamics -> OUT/model
    probe     the env's goal descriptor (skipped where the env cannot label states)  OUT/model/probe
    idm       inverse dynamics for planner=video_plan            OUT/model/idm
    quality   held-out PSNR / object PSNR / action adherence vs copy-last
    eval      learned / random / oracle (where cloneable), same seeds     OUT/eval/<name>
    card      OUT/model/README.md

``OUT/fit.json`` holds what each stage planned and measured; it is written atomically after
every stage, so running the same command again continues where it stopped (a training stage
resumes from its last checkpoint, collection appends the missing seeds).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sfplan.errors import UserError
from sfplan.io import update_model_meta

STAGES = ("collect", "vae", "dynamics", "probe", "idm", "eval")
#: tiny models for smoke tests (``size=toy``); a toy model does not plan
TOY = {
    "vae": ["model.block_out_channels=[8,8,8]", "model.norm_num_groups=4", "batch_size=4", "latent_scale_frames=64"],
    "dynamics": ["model.world_model.chunk_size=2", "model.diffusion.block_out_channels=[16,32]",
                 "model.diffusion.head_dim=8", "model.diffusion.cross_attention_dim=16",
                 "model.diffusion.norm_num_groups=4", "model.diffusion.max_frames=8", "batch_size=2"],
    "probe": ["model.width=8", "model.hidden_dim=16", "batch_size=16", "val_frames=32"],
    "idm": ["model.block_out_channels=[8,8,8]", "model.hidden_dim=16", "model.norm_num_groups=4", "batch_size=8",
            "val_windows=32"],
}
CALIBRATION_STEPS = 6
#: how the card names the collection policy
POLICY_WORDS = {"correlated": "correlated random actions", "explore": "the env's routes (policy=explore) and random actions",
                "random": "uniform random actions", "goal": "the env's scripted goal reaching and random actions"}
#: a training stage's time limit, over the seconds it was sized for (its steps take 0.9 of them at the
#: calibrated rate): a machine slower than at calibration ends the stage early rather than starve the next
STAGE_TIME_SLACK = 1.15
MIN_STAGE_S = 20.0
TOY_MAX_STEPS = 12


# ----------------------------------------------------------------------------- state
class FitState:
    """``OUT/fit.json``: the env, the budget, and per stage what was planned and measured."""

    def __init__(self, path: Path, init: dict):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {**init, "stages": {}}

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {})

    def done(self, name: str) -> bool:
        return self.data["stages"].get(name, {}).get("status") in ("done", "skipped")

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_jsonable))
        os.replace(tmp, self.path)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# ----------------------------------------------------------------------------- recipe
def derive_recipe(ds, recipe: DictConfig, latent_factor: int = 4, max_episodes: int = 64, seed: int = 0) -> dict:
    """Settings derived from the data, where the shipped models once needed a hand-set knob.

    - ``fg_weight`` (VAE): with p the fraction of pixels the VAE's own ``foreground_mask``
      marks in a batch of frames (the moving object), the weight that gives those pixels a
      ``fg_share`` of the reconstruction loss: w = s/(1-s) * (1-p)/p.
    - ``motion_weight`` (dynamics): with q the fraction of latent positions whose pixels move
      (``pixel_motion_mask``, the mask the dynamics stage weighs), 1 + w = s/(1-s) * (1-q)/q
      gives them a ``motion_share`` of the loss.
    Also measured: moving pixels per step, the per-step motion a chunk is made of.
    Returns the derived values and the statistics they come from."""
    from sfplan.world_model.vae import foreground_mask
    from sfplan.world_model.video_diffusion import pixel_changes, pixel_motion_mask

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))[:max_episodes]
    eps = [ds[int(i)] for i in idx]
    frames = torch.as_tensor(np.concatenate([e.pixels for e in eps])).permute(0, 3, 1, 2).float() / 127.5 - 1
    p_list = []
    for _ in range(16):  # VAE-sized batches of frames drawn across episodes
        take = torch.as_tensor(rng.choice(len(frames), size=min(32, len(frames)), replace=False))
        p_list.append(float(foreground_mask(frames[take]).mean()))
    p = max(float(np.mean(p_list)), 1e-4)
    q_list, step_px = [], []
    for e in eps:
        px = torch.as_tensor(e.pixels)  # (T, H, W, 3) uint8
        step_px.append(float(pixel_changes(px).float().mean()))
        q_list.append(float(pixel_motion_mask(px, latent_factor).float().mean()))
    q = max(float(np.mean(q_list)), 1e-4)
    s, sm = float(recipe.fg_share), float(recipe.motion_share)
    fg = s / (1 - s) * (1 - p) / p
    mw = sm / (1 - sm) * (1 - q) / q - 1
    out = {
        "stats": {"episodes_measured": len(eps), "foreground_pixel_fraction": p, "moving_latent_fraction": q,
                  "moving_pixels_per_step": float(np.mean(step_px))},
        "fg_weight": float(np.clip(fg, 0.0, 500.0)) if recipe.fg_weight == "auto" else float(recipe.fg_weight),
        "motion_weight": float(np.clip(mw, 0.0, 50.0)) if recipe.motion_weight == "auto" else float(recipe.motion_weight),
        "fg_balance": str(recipe.fg_balance),
        "motion_mask": str(recipe.motion_mask),
        "num_context": int(recipe.num_context),
        "sampler_timesteps": float(recipe.sampler_timesteps),
        "probe_imagined": bool(recipe.probe_imagined),
    }
    return out


#: action repeat: frames a chunk spans when the motion is measured (the planners' chunk)
MOTION_CHUNK = 8
#: the largest ratio (pixels changed over a chunk) / (pixels changed in one step) at which a step
#: shows enough motion: ~2.5 when each step moves the object by about a third of its size or more
MAX_CHUNK_STEP_RATIO = 2.5
#: a step that changes this share of the frame moves the whole view (a first-person camera):
#: the ratio says nothing about an object's size there, and no repeat is needed
WHOLE_VIEW_SHARE = 0.05
MAX_REPEAT = 6


def derive_action_repeat(frames: list[np.ndarray], chunk: int = MOTION_CHUNK) -> dict:
    """The action repeat k that makes a step show motion, from episodes of correlated random
    actions at k = 1 (each (T+1, H, W, 3) uint8, T >= ``chunk`` x ``MAX_REPEAT``).

    m(j), the fraction of pixels that differ between frames j steps apart, grows with j while
    the moving object still overlaps itself and saturates once it has moved past its own
    size. Frames j apart at k = 1 stand in for consecutive frames at k = j, so k is the
    smallest with m(chunk x k) / m(k) <= ``MAX_CHUNK_STEP_RATIO`` (or m(k) >=
    ``WHOLE_VIEW_SHARE``). Measured with this rule: Reacher 1, PointMaze at gymnasium-robotics'
    own frame_skip 1 UMaze 4 and Medium 5 (the shipped PointMaze models use 4), PointMaze at
    frame_skip 4 1, MemoryMaze 1 (docs/notes/2026-12-06-sfplan-fit.md)."""
    span = min(len(f) for f in frames) - 1
    offsets = sorted({j for r in range(1, MAX_REPEAT + 1) for j in (r, chunk * r) if j <= span})
    m = np.zeros(span + 1)
    for f in frames:
        x = f.astype(np.int16)
        for j in offsets:  # only the gaps the ratios read
            m[j] += float((np.abs(x[j:] - x[:-j]).max(-1) > 25).mean())
    m /= len(frames)
    ratios, k = {}, None
    for r in range(1, MAX_REPEAT + 1):
        if chunk * r > span:
            break
        ratios[r] = float(m[chunk * r] / max(m[r], 1e-9))
        if k is None and (ratios[r] <= MAX_CHUNK_STEP_RATIO or m[r] >= WHOLE_VIEW_SHARE):
            k = r
    return {"action_repeat": int(k or max(ratios, default=1)), "chunk_step_ratio": ratios,
            "changed_per_step": float(m[1]), "episodes": len(frames), "steps": span}


def measure_action_repeat(env_id: str, env_kwargs: dict, seed: int, episodes: int = 6) -> dict:
    """``derive_action_repeat`` on ``episodes`` rollouts of the collection policy at k = 1."""
    from sfplan.data.collect import rollout
    from sfplan.data.policies import make_policy
    from sfplan.envs.spec import make_env

    env = make_env(env_id, **env_kwargs)
    try:
        eps = [rollout(env, make_policy("correlated"), seed=int(seed) + i, steps=MOTION_CHUNK * MAX_REPEAT)
               for i in range(episodes)]
    finally:
        env.close()
    frames = [e.pixels for e in eps if len(e.pixels) > MOTION_CHUNK]
    if not frames:
        return {"action_repeat": 1, "why": f"episodes end within {MOTION_CHUNK} steps"}
    return derive_action_repeat(frames)


def auto_policy(check: dict, noise_episodes: float) -> tuple[str, dict]:
    """``collect.policy=auto`` from the env check: whole passages where the env offers routes
    through its layout (a maze: ``explore``); its own collection script where it offers one
    (``_collect_actions``, Pusher's pushes, the robosuite tasks' reach to the cube: ``goal``,
    with ``noise_episodes`` of the episodes random motion); else correlated random actions.
    -> (policy, policy kwargs)."""
    if check.get("routes"):
        return "explore", {}
    if check.get("collect_script"):
        return "goal", {"noise_episodes": float(noise_episodes)}
    return "correlated", {}


# ----------------------------------------------------------------------------- the fit
class Fit:
    """One ``sfplan fit`` run (see the module docstring); ``run()`` -> the fit summary."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.out = Path(str(cfg.out)).expanduser()
        self.work = self.out / "work"
        self.model_dir = self.out / "model"
        self.budget_s = float(cfg.minutes) * 60.0
        self.env_id = str(cfg.env.id)
        self.user_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.env.kwargs, resolve=True).items()
                            if k != "goal"}
        self.env_kwargs = dict(self.user_kwargs)  # + the derived action_repeat once measured (``motion``)
        self.toy = str(cfg.size) == "toy"

    # ---- helpers
    def share_s(self, stage: str, st: FitState | None = None) -> float:
        """Seconds for ``stage``: its share of what the finished stages left of the budget
        (time a fast stage saved goes to the later ones), or of the whole budget without ``st``."""
        sh = {k: float(v) for k, v in self.cfg.shares.items()}
        if st is None:
            return self.budget_s * sh[stage]
        done = [k for k in sh if st.done(k) and k != stage]
        spent = sum(float(st.data["stages"][k].get("wall_s", 0.0)) for k in done)
        left = sum(v for k, v in sh.items() if k not in done)
        return max(0.0, self.budget_s - spent) * sh[stage] / max(left, 1e-9)

    def _env_overrides(self) -> list[str]:
        return [f"env.id={self.env_id}", *(f"env.kwargs.{k}={json.dumps(v)}" for k, v in self.env_kwargs.items())]

    def _train_overrides(self, stage: str) -> list[str]:
        return [f"stage={stage}", f"data.path={self.work / 'data'}", f"latent_cache_dir={self.work / 'cache'}",
                f"device={self.cfg.device}", f"progress={str(bool(self.cfg.progress)).lower()}", f"seed={self.cfg.seed}",
                *(TOY[stage] if self.toy else [])]

    def _check(self) -> dict:
        """The env, made once and checked before anything slow (exit 2 with the fix)."""
        from sfplan.data.policies import has_routes, make_policy
        from sfplan.envs.spec import can_label_states, check_goal_image_env, make_env
        from sfplan.world_model.oracle import can_clone

        if not float(self.cfg.minutes) > 0:
            raise UserError(f"minutes={self.cfg.minutes}: the whole budget in minutes, > 0 (3 gives a complete, "
                            f"poor, model dir; 30 a usable one on a 2-core CPU)")
        if abs(sum(float(v) for v in self.cfg.shares.values()) - 1.0) > 1e-6:
            raise UserError(f"shares must add up to 1, got {dict(self.cfg.shares)}")
        if not 0 <= int(self.cfg.seed) < 100000:
            raise UserError(f"seed={self.cfg.seed}: collection seeds stay below 100000 (evaluation seeds start there)")
        if str(self.cfg.size) not in ("default", "toy"):
            raise UserError(f"size={self.cfg.size!r}: default or toy")
        env = make_env(self.env_id, **self.user_kwargs)
        try:
            got = check_goal_image_env(env, self.env_id)
            got["can_label_states"] = can_label_states(env)
            got["cloneable"] = can_clone(env)
            got["routes"] = has_routes(env.unwrapped)
            got["collect_script"] = callable(getattr(env.unwrapped, "_collect_actions", None))
            got["success_radius"] = float(getattr(env.unwrapped, "success_threshold", 0.0) or 0.0) or None
            if not 0.0 <= float(self.cfg.collect.noise_episodes) <= 1.0:
                raise UserError(f"collect.noise_episodes={self.cfg.collect.noise_episodes}: the share of episodes of "
                                f"random motion beside the env's collection script, in [0, 1]")
            policy = str(self.cfg.collect.policy)
            if policy != "auto":
                make_policy(policy)  # an unknown name: exit 2 naming the choices
                if policy == "explore" and not got["routes"]:
                    raise UserError(f"collect.policy=explore needs an env with exploration routes; {self.env_id} has "
                                    f"none: use collect.policy=auto (correlated random actions there)")
        finally:
            env.close()
        return got

    # ---- stages
    def motion(self, st: FitState) -> None:
        """The action repeat: the user's ``env.kwargs.action_repeat``, or derived from a few
        rollouts (``derive_action_repeat``); every later stage makes the env with it."""
        if "motion" not in st.data:
            given = self.user_kwargs.get("action_repeat")
            if given is not None or "episodes" in st.stage("collect"):  # given, or data made without it
                st.data["motion"] = {"action_repeat": int(given or 1), "source": "env.kwargs"}
            else:
                st.data["motion"] = {**measure_action_repeat(self.env_id, self.user_kwargs, int(self.cfg.seed)),
                                     "source": "derived"}
            st.save()
        k = int(st.data["motion"]["action_repeat"])
        self.env_kwargs = {**self.user_kwargs, **({"action_repeat": k} if k > 1 else {})}
        st.data["env_fitted"] = {"id": self.env_id, "kwargs": self.env_kwargs}

    def collect(self, st: FitState) -> None:
        from sfplan.data import EpisodeDataset
        from sfplan.data.collect import collect

        c, rec = self.cfg.collect, st.stage("collect")
        data = self.work / "data"
        limit = st.data["env_check"]["max_episode_steps"]
        steps = int(min(int(c.steps), limit)) if limit else int(c.steps)

        def have() -> int:
            if not data.is_dir() or not any(data.glob("*.h5")):
                return 0
            with EpisodeDataset(data) as ds:
                return len(ds)

        policy, policy_kwargs = str(c.policy), {}
        if "episodes" in rec:  # resumed: the policy the data were started with (fits before the choice: correlated)
            policy, policy_kwargs = rec.get("policy", "correlated"), rec.get("policy_kwargs", {})
        elif policy == "auto":
            policy, policy_kwargs = auto_policy(st.data["env_check"], float(c.noise_episodes))
        rec.update(policy=policy, policy_kwargs=policy_kwargs)
        kw = dict(steps=steps, policy=policy, policy_kwargs=policy_kwargs, seed=int(self.cfg.seed),
                  progress=bool(self.cfg.progress))
        t0 = time.perf_counter()
        if "episodes" not in rec:  # the pilot: one process, timed, sizes the rest
            n0 = have()
            pilot = int(c.pilot_episodes)
            tp = time.perf_counter()
            if n0 < pilot:
                collect(data, self.env_id, self.env_kwargs, episodes=pilot - n0, workers=1, append=n0 > 0, **kw)
            per_episode = (time.perf_counter() - tp) / max(1, pilot - n0) if n0 < pilot else 0.05
            workers = max(1, min(int(c.workers), os.cpu_count() or 1))
            rate = workers * 0.8 / max(per_episode, 1e-3)  # episodes/s with the workers (spawn overhead: 0.8)
            rec.update(steps=steps, pilot_s_per_episode=per_episode, workers=workers,
                       episodes=int(np.clip(rate * self.share_s("collect"), int(c.min_episodes), int(c.max_episodes))))
            st.save()
        missing = int(rec["episodes"]) - have()
        if missing > 0:
            collect(data, self.env_id, self.env_kwargs, episodes=missing, workers=int(rec["workers"]), append=True,
                    **kw)
        with EpisodeDataset(data) as ds:
            rec.update(dataset_episodes=len(ds), dataset_steps=int(ds.num_steps),
                       dataset_mb=sum(f.stat().st_size for f in data.glob("*.h5")) / 2**20)
        rec["wall_s"] = rec.get("wall_s", 0.0) + time.perf_counter() - t0
        rec["status"] = "done"
        st.save()

    def recipe(self, st: FitState) -> None:
        from sfplan.data import EpisodeDataset

        with EpisodeDataset(self.work / "data") as ds:
            st.data["recipe"] = derive_recipe(ds, self.cfg.recipe, seed=int(self.cfg.seed))
        st.save()

    def _stage_overrides(self, stage: str, st: FitState) -> list[str]:
        r = st.data["recipe"]
        if stage == "vae":
            return [f"model.fg_weight={r['fg_weight']:.4g}", f"model.fg_balance={r.get('fg_balance', 'pixel')}"]
        if stage == "dynamics":
            return [f"vae={self.work / 'runs' / 'vae' / 'model'}", f"motion_weight={r['motion_weight']:.4g}",
                    f"motion_mask={r.get('motion_mask', 'latent')}", f"num_context={r['num_context']}",
                    f"sampler_timesteps={r['sampler_timesteps']}"]
        extra = [f"vae={self.model_dir}", f"attach_to={self.model_dir}"]
        if stage == "probe":
            extra += [f"imagined={str(r['probe_imagined']).lower()}",
                      f"imagined_stride={st.stage('probe').get('imagined_stride', 4)}"]
        return extra

    def _calibrate(self, stage: str, overrides: list[str]) -> tuple[float, float]:
        """A few steps of the real stage in a scratch run -> (steps/s, setup + steps wall s)."""
        from sfplan.config import load_config
        from sfplan.training import run_train

        scratch = self.work / "calibrate" / stage
        shutil.rmtree(scratch, ignore_errors=True)
        t0 = time.perf_counter()
        ov = [*overrides, f"out_dir={scratch}", f"steps={CALIBRATION_STEPS}", "checkpoint_every=100000",
              "val_every=0", "sample_every=0", "tensorboard=false", "progress=false", "warmup_steps=0"]
        if stage == "probe":
            ov.append("imagined=false")
        r = run_train(load_config("train", ov))
        wall = time.perf_counter() - t0
        shutil.rmtree(scratch, ignore_errors=True)
        return float(r.get("steps_per_s") or 1.0), wall

    def train(self, stage: str, st: FitState) -> None:
        from sfplan.config import load_config
        from sfplan.training import run_train

        rec = st.stage(stage)
        base = [*self._train_overrides(stage), *self._stage_overrides(stage, st)]
        stage_cfg = load_config("train", base)  # the stage's own defaults: steps (the cap), warmup_steps
        t0 = time.perf_counter()
        if "steps" not in rec:
            rate, cal_wall = self._calibrate(stage, base)
            avail = self.share_s(stage, st) - cal_wall
            if stage == "probe" and st.data["recipe"]["probe_imagined"]:
                avail = self._plan_imagination(st, avail)
                base = [*self._train_overrides(stage), *self._stage_overrides(stage, st)]
            steps = int(np.clip(rate * max(avail, 0.0) * 0.9, 20, int(stage_cfg.steps)))
            if self.toy:
                steps = min(steps, TOY_MAX_STEPS)
            rec.update(steps=steps, calibrated_steps_per_s=rate, calibration_s=cal_wall,
                       time_limit_s=max(STAGE_TIME_SLACK * avail, MIN_STAGE_S))
            st.save()
        steps = int(rec["steps"])
        warm = int(stage_cfg.warmup_steps)
        ov = [*base, f"out_dir={self.work / 'runs' / stage}", f"steps={steps}",
              f"warmup_steps={min(warm, max(1, steps // 10))}", f"checkpoint_every={max(10, steps // 4)}",
              f"val_every={steps}", f"sample_every={steps}", "tensorboard=true"]
        if "time_limit_s" in rec:
            ov.append(f"time_limit_s={rec['time_limit_s']:.1f}")
        r = run_train(load_config("train", ov), command="sfplan train " + " ".join(ov))
        if r.get("stopped"):
            raise UserError(f"the {stage} stage stopped at step {r['step']}: run the same sfplan fit command again "
                            f"to resume")
        if r.get("stopped_early"):  # slower than calibrated: the stage kept to its time
            rec["steps_done"] = int(r["stopped_early"]["step"])
        rec.update(wall_s=rec.get("wall_s", 0.0) + time.perf_counter() - t0, steps_per_s=r.get("steps_per_s"),
                   final_loss=(r.get("last_train") or {}).get("loss"), val=r.get("last_val"),
                   sample=r.get("last_sample"), status="done")
        if stage == "dynamics":
            self._assemble(Path(r["model"]))
        st.save()

    def _plan_imagination(self, st: FitState, avail: float) -> float:
        """The probe's imagined clips (one per ``imagined_stride`` steps of each training
        episode) get at most 40% of its budget; the time per clip is estimated from the
        dynamics stage's calibrated rate (a clip: 2 sampler forwards, a training step: a
        forward and a backward, about 3 forwards, of a batch of 16 clips)."""
        dyn = st.stage("dynamics")
        per_clip = 2.0 / 3.0 / (float(dyn.get("calibrated_steps_per_s", 1.0)) * 16)
        train_steps = st.stage("collect")["dataset_steps"] * 0.9
        stride = max(4, math.ceil(train_steps * per_clip / max(0.4 * avail, 1e-6)))
        st.stage("probe").update(imagined_stride=stride, imagined_clips_est=int(train_steps / stride),
                                 imagined_s_est=train_steps / stride * per_clip)
        return avail - train_steps / stride * per_clip

    def _assemble(self, dyn_model: Path) -> None:
        """OUT/model: the dynamics run's world model (VAE + diffusion + scheduler), copied
        through a temp folder and renamed into place."""
        tmp = self.out / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(dyn_model, tmp)
        shutil.rmtree(self.model_dir, ignore_errors=True)
        os.replace(tmp, self.model_dir)

    def quality(self, st: FitState) -> None:
        st.data["quality"] = q = model_quality(self.model_dir, self.work / "data", device=str(self.cfg.device))
        cost, why = planning_cost(q, st.data["env_check"].get("success_radius"))
        q["planning_cost"] = {"cost": cost, "why": why}
        update_model_meta(self.model_dir, planning={"cost": cost})  # what `cost: auto` resolves to (derive_env_settings)
        st.save()

    def evaluate(self, st: FitState) -> None:
        from sfplan.config import load_config
        from sfplan.eval.main import run_eval

        e, rec = self.cfg.eval, st.stage("eval")
        t0 = time.perf_counter()
        names = [b for b in e.baselines if b != "oracle" or st.data["env_check"]["cloneable"]]
        rec.setdefault("skipped", [b for b in e.baselines if b not in names])
        per = {"learned": ["world_model=learned", f"world_model.path={self.model_dir}"],
               "oracle": ["world_model=oracle"], "random": ["planner=random"]}
        shares = {"learned": 0.6, "oracle": 0.3, "random": 0.1}
        n = int(e.episodes)
        results = rec.setdefault("results", {})
        for name in names:
            out = self.out / "eval" / name
            if name not in results:
                ov = [*self._env_overrides(), *per[name], f"episodes={n}", f"seed={int(e.seed)}", f"out_dir={out}",
                      f"goal={self.cfg.goal}", f"device={self.cfg.device}", "max_gifs=4",
                      f"progress={str(bool(self.cfg.progress)).lower()}",
                      f"time_limit_s={max(1.0, rec.setdefault('seconds', self.share_s('eval', st)) * shares[name]):.1f}"]
                if e.get("budget") is not None:
                    ov.append(f"budget={int(e.budget)}")
                rep = run_eval(load_config("eval", ov))
                s = rep["summary"]
                results[name] = {"successes": s["successes"], "episodes": s["episodes"],
                                 "success_rate": s["success_rate"], "ci95": s["success_rate_ci95"],
                                 "plan_time_per_decision_s": s["plan_time_per_decision_s"],
                                 "report": str(out.relative_to(self.out) / "report.md")}
                st.save()
            if name == "learned":
                n = int(results["learned"]["episodes"])  # the others run the same seeds
        rec["wall_s"] = rec.get("wall_s", 0.0) + time.perf_counter() - t0
        rec["status"] = "done"
        st.save()

    # ---- driver
    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        st = FitState(self.out / "fit.json", {"env": {"id": self.env_id, "kwargs": self.user_kwargs},
                                              "minutes": float(self.cfg.minutes), "size": str(self.cfg.size)})
        if st.data["env"] != {"id": self.env_id, "kwargs": self.user_kwargs}:
            raise UserError(f"{self.out} holds a fit of {st.data['env']}, not of {self.env_id} {self.user_kwargs}: "
                            f"choose another out=")
        st.data["env_check"] = self._check()
        self.motion(st)
        st.data.setdefault("config", OmegaConf.to_container(self.cfg, resolve=True))  # the shares, recipe, eval it began with
        st.data.setdefault("hardware", hardware())
        st.save()
        t0 = time.perf_counter()
        if not st.done("collect"):
            self.collect(st)
        if "recipe" not in st.data:
            self.recipe(st)
        for stage in ("vae", "dynamics"):
            if not st.done(stage):
                self.train(stage, st)
        if not st.done("probe"):
            if st.data["env_check"]["can_label_states"]:
                self.train("probe", st)
            else:
                st.stage("probe").update(status="skipped", why="the env reports no goal descriptor of a state "
                                         "(GoalImageWrapper(descriptor_fn=...) on a MuJoCo env gives one); the "
                                         "learned planner scores with the image cost")
                st.save()
        if not st.done("idm"):
            self.train("idm", st)
        if "quality" not in st.data:
            self.quality(st)
        if not st.done("eval"):
            self.evaluate(st)
        st.data["wall_s_this_run"] = time.perf_counter() - t0
        st.save()
        write_fit_card(self.out, st.data)
        return st.data


#: the state probe counts in the held-out check only where it reads the true frames at least this
#: much better than the last context frame held still (else it cannot read the state: a follow
#: camera's local view in MemoryMaze; a ball the VAE lost)
PROBE_READS_STATE = 0.5
#: ... and without it the object PSNR under the true actions must beat shuffled actions' by this
#: much (dB): fits whose models followed their actions measured +0.7 to +2.4, those whose models
#: had lost the object -0.00 and +0.002 (benchmarks/results/fit)
FOLLOWS_ACTIONS_DB = 0.25


def planning_cost(q: dict, radius: float | None) -> tuple[str, str]:
    """The learned planner's cost for a fitted model, with why: ``probe`` where the state probe
    reads the true held-out frames closer than the task's success radius (or, where the env
    has none, ``PROBE_READS_STATE`` times closer than the last context frame held still), else
    ``multiscale``, the image cost: a probe that cannot tell a goal reached from one missed
    steers the search at random (a 30-minute Pusher fit: probe error 0.10 m, radius 0.05 m)."""
    se = q.get("state_error") or {}
    if "truth" not in se:
        return "multiscale", "no state probe"
    if radius:
        ok, bound = se["truth"] < radius, f"the success radius {radius:.3g}"
    else:
        ok, bound = se["truth"] <= PROBE_READS_STATE * se["copy_last"], \
            f"{PROBE_READS_STATE} x the last context frame's {se['copy_last']:.3g}"
    return ("probe" if ok else "multiscale"), (f"the probe reads the true frames within {se['truth']:.3g}, "
                                               f"{'under' if ok else 'not under'} {bound}")


def model_quality(model_dir, data_dir, device: str = "auto", episodes: int = 32, min_seed: int = 0) -> dict:
    """A model dir's held-out check on a dataset (``sfplan.eval.quality.held_out_quality``, plus
    ``verdict``): the first ``episodes`` held-out episodes of ``data_dir`` (its 10% split by seed,
    the split every training stage keeps out) whose seed is at least ``min_seed``."""
    from sfplan.data import EpisodeDataset
    from sfplan.eval.quality import held_out_quality
    from sfplan.world_model.learned import load_world_model
    from sfplan.world_model.probe import label_descriptors

    wm = load_world_model(str(model_dir), device=device, return_frames="all")
    with EpisodeDataset(data_dir) as ds:
        _, val = ds.split(0.1)
        seeds = val.seeds
        picked = [i for i in range(len(val)) if int(seeds[i]) >= min_seed][:episodes]
        eps = [val[i] for i in picked]
        labelled = wm.probe is not None and all(e.states is not None for e in eps)
        desc = label_descriptors(ds.meta, (e.states for e in eps)) if labelled else None
        q = held_out_quality(wm, eps, descriptors=desc)
    q["verdict"] = quality_verdict(q)
    return q


def quality_verdict(q: dict) -> str | None:
    """None where the held-out check shows a model that keeps the moving object and follows
    the actions; else what it lacks, with the fix. Where the state probe reads the true frames
    (``PROBE_READS_STATE``), the state read off the model's frames must be closer to the truth
    than the state read off the last real frame held still (copy-last) and off the model's
    frames under shuffled actions; elsewhere the object PSNR under the true actions must beat
    shuffled actions' by ``FOLLOWS_ACTIONS_DB``."""
    if "psnr" not in q:
        return None
    se = q.get("state_error")
    if se and "truth" in se and se["truth"] > PROBE_READS_STATE * se["copy_last"]:
        se = None  # the probe cannot read the state: its figures say nothing of the model
    if se:
        if se["model"] < min(se["copy_last"], se["shuffled_actions"]):
            return None
        why = (f"its frames put the object no nearer the truth (probe state error {se['model']:.3g}) than the "
               f"last real frame held still ({se['copy_last']:.3g}) or its own frames under shuffled actions "
               f"({se['shuffled_actions']:.3g})")
    else:
        if q["adherence_margin_db"] >= FOLLOWS_ACTIONS_DB:
            return None
        why = f"its frames do not follow the actions (object PSNR adherence {q['adherence_margin_db']:+.2f} dB)"
    return (f"this model does not yet imagine the moving object: {why}, so planning with it is guesswork. "
            f"Give the fit more time (a new out= with a larger minutes=), or train its dynamics on with "
            f"`sfplan train stage=dynamics init_from=<this model>` on the fit's data (work/data).")


def hardware() -> dict:
    from sfplan.training.trainer import cpu_info

    cpu, isa = cpu_info()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__}


def _repeat_source(motion: dict) -> str:
    if motion.get("source") != "derived":
        return "env.kwargs.action_repeat" if motion else "not measured"
    ratios = motion.get("chunk_step_ratio") or {}
    shown = ", ".join(f"k={k}: {v:.2f}" for k, v in ratios.items())
    return (f"changed pixels over {MOTION_CHUNK} steps / over 1 step at repeat k ({shown}; <= "
            f"{MAX_CHUNK_STEP_RATIO}), {motion.get('changed_per_step', 0):.4f} of a frame per step")


def write_fit_card(out: Path, s: dict) -> Path:
    """``OUT/model/README.md``: the model card of a fit, generated from ``fit.json``."""
    st, r, hw, mo = s["stages"], s.get("recipe", {}), s.get("hardware", {}), s.get("motion", {})
    env = s["env"]
    spec = f"env.id={env['id']}" + "".join(f" env.kwargs.{k}={v}" for k, v in env["kwargs"].items())
    c = st.get("collect", {})
    lines = [f"# World model for `{env['id']}` (sfplan fit)", "",
             f"Made by `sfplan fit {spec} out=<this fit> minutes={s['minutes']:g}` (size {s['size']}) on "
             f"{hw.get('cpu')} ({hw.get('isa') or 'no AVX2'}, {hw.get('cores')} cores"
             f"{', GPU ' + hw['gpu'] if hw.get('gpu') else ''}), torch {hw.get('torch')}.", "",
             "Use it: `sfplan eval world_model.path=<this folder>` (the env is recorded here), "
             "`sfplan generate model=<this folder>`.", "",
             "## Data", "",
             f"{c.get('dataset_episodes')} episodes x {c.get('steps')} steps ({c.get('dataset_steps')} steps, "
             f"{c.get('dataset_mb', 0):.1f} MB), policy {POLICY_WORDS.get(c.get('policy', 'correlated'), c.get('policy'))}; "
             f"{s.get('env_check', {}).get('image_size')}x{s.get('env_check', {}).get('image_size')} frames.", "",
             "## Derived settings", "",
             "| setting | value | from |", "|---|---|---|",
             f"| VAE fg_weight | {r.get('fg_weight', 0):.1f} | foreground pixels "
             f"{r.get('stats', {}).get('foreground_pixel_fraction', 0):.4f} of a frame batch |",
             f"| VAE fg_balance | {r.get('fg_balance', 'pixel')} | recipe |",
             f"| dynamics motion_weight | {r.get('motion_weight', 0):.1f} | moving latent positions "
             f"{r.get('stats', {}).get('moving_latent_fraction', 0):.4f} |",
             f"| dynamics motion_mask | {r.get('motion_mask', 'latent')} | recipe |",
             f"| action repeat | {mo.get('action_repeat', 1)} | {_repeat_source(mo)} |",
             f"| num_context | {r.get('num_context')} | recipe |",
             f"| sampler_timesteps | {r.get('sampler_timesteps')} | recipe |",
             f"| probe on imagination | {r.get('probe_imagined')} | recipe |",
             *([f"| planning cost | {pc['cost']} | {pc['why']} |"] if (pc := s.get("quality", {}).get(
                 "planning_cost")) else []), "",
             "## Stages", "", "| stage | training steps | steps/s | wall s | note |", "|---|---|---|---|---|"]
    for name in STAGES:
        d = st.get(name, {})
        if not d:
            continue
        note = d.get("why", "") if d.get("status") == "skipped" else (
            f"final loss {d['final_loss']:.4g}" if d.get("final_loss") is not None else "")
        sps = d.get("steps_per_s")
        if name == "collect":
            note = f"{d.get('dataset_episodes')} episodes of {d.get('steps')} steps"
        amount = d.get("steps", "") if name in ("vae", "dynamics", "probe", "idm") else ""
        if "steps_done" in d:
            amount, note = d["steps_done"], f"{note}; ended by its time limit ({d['steps']} planned)"
        lines.append(f"| {name} | {amount} | "
                     f"{f'{sps:.2f}' if sps else ''} | {d.get('wall_s', 0):.0f} | {note} |")
    walls = [float(d.get("wall_s", 0.0)) for d in st.values()]
    lines.append(f"\nStages took {sum(walls) / 60:.1f} min of the {s['minutes']:g}-min budget.")
    q = s.get("quality", {})
    if "psnr" in q:
        se = q.get("state_error")  # the probe's reading of each run's frames against the true state
        lines += ["", f"## Held-out quality ({q['episodes']} episodes, one chunk of {q['chunk']} steps)", "",
                  "| | PSNR dB | object PSNR dB |" + (" probe state error |" if se else ""),
                  "|---|---|---|" + ("---|" if se else ""),
                  *(f"| {k.replace('_', ' ')} | {q['psnr'][k]:.2f} | {q['object_psnr'][k]:.2f} |"
                    + (f" {se[k]:.4f} |" if se else "") for k in ("model", "copy_last", "shuffled_actions")),
                  "", f"Action adherence (object PSNR, true minus shuffled actions): {q['adherence_margin_db']:+.2f} dB."]
        if se and "truth" in se:
            lines += [f"The probe reads the true frames with state error {se['truth']:.4f} (its own error)."]
        verdict = quality_verdict(q)
        unread = not se or ("truth" in se and se["truth"] > PROBE_READS_STATE * se["copy_last"])
        lines += ["", f"**Not ready to plan with**: {verdict}" if verdict else
                  "The model follows the actions (held-out check above). There is no probe that reads the state "
                  "off the true frames here, so this check does not see a small object the model may have lost: "
                  "read the planning table." if unread else
                  "The model keeps the moving object and follows the actions (held-out check above)."]
    elif q:
        lines += ["", "## Held-out quality", "", f"Not measured: {q.get('note')} ({q.get('episodes')} held out)."]
    ev = st.get("eval", {}).get("results", {})
    if ev:
        lines += ["", "## Planning (CEM, evaluation seeds from 100000)", "",
                  "| world model | success | 95% CI | plan s / decision |", "|---|---|---|---|"]
        for name, d in ev.items():
            lo, hi = d["ci95"]
            lines.append(f"| {name} | {d['successes']}/{d['episodes']} | {lo:.0%}-{hi:.0%} | "
                         f"{d['plan_time_per_decision_s']:.2f} |")
        if st["eval"].get("skipped"):
            lines.append(f"\nNot run: {', '.join(st['eval']['skipped'])} (the env cannot be cloned).")
    path = out / "model" / "README.md"
    from sfplan.paths import scrub_paths

    path.write_text(scrub_paths("\n".join(lines) + "\n"))  # the card travels with the model
    return path


def run_fit(cfg: DictConfig) -> dict:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("sfplan fit collects and evaluates in one process: run it plainly, or run its training "
                        "stages under DDP with `accelerate launch -m sfplan.cli train ...` (see docs/gpu.md)")
    return Fit(cfg).run()


__all__ = ["run_fit", "derive_recipe", "Fit", "write_fit_card", "quality_verdict"]
