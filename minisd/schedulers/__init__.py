"""Schedulers: how the image information creator walks from noise to a picture, step by step.

After each UNet call a scheduler makes one *denoising step*. Every one here matches its
diffusers namesake to float32 rounding and is built from a checkpoint's scheduler_config.json:

    schedule.py     the noise schedule (betas, alpha_bar, timestep spacing) and `Scheduler`,
                    the base class every scheduler shares
    pndm.py         PNDM (PLMS), the SD 1.x default: a linear multistep on DDIM's move
    ddim.py         DDIM: predict x_0, put it back one step less noisy (eta adds noise)
    ddpm.py         DDPM: sample the posterior, fresh noise every step
    sigmas.py       the samplers in sigma space (Karras et al.), what they share
    euler.py        Euler, Euler ancestral, Heun
    lms.py          linear multistep
    dpm_solver.py   DPM-Solver++(2M), plain or on Karras sigmas
    lcm.py          LCM: latent consistency models' 2-8 step sampling

`SCHEDULERS` names them all (the API's and the command line's `scheduler=`).
"""

from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpm_solver import DPMSolverKarrasScheduler, DPMSolverMultistepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler
from .lcm import LCMScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .schedule import Scheduler

SCHEDULERS = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,  # Karras sigmas if the config asks (use_karras_sigmas)
    "dpmpp_2m_karras": DPMSolverKarrasScheduler,
    "lms": LMSDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "lcm": LCMScheduler,
}

__all__ = [
    "SCHEDULERS",
    "Scheduler",
    "check_config",
    "make_scheduler",
    "scheduler_name",
    *(cls.__name__ for cls in SCHEDULERS.values()),
]


def scheduler_name(config):
    """The name in SCHEDULERS of the class a scheduler_config.json dict names (`_class_name`)."""
    by_class = {cls.__name__: name for name, cls in SCHEDULERS.items() if name != "dpmpp_2m_karras"}
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    if class_name not in by_class:
        raise ValueError(
            f"the scheduler config names {class_name!r}, which minisd does not implement: "
            f"choose a scheduler name, one of {', '.join(SCHEDULERS)}"
        )
    return by_class[class_name]


def make_scheduler(name, config, source="scheduler config"):
    """Build scheduler `name` (a key of SCHEDULERS) from a scheduler_config.json dict.

    name=None builds the class the config names in `_class_name`. `source` names the file in errors.
    """
    name = scheduler_name(config) if name is None else name
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](config, source)


def check_config(config, source):
    """Check a scheduler_config.json dict as every scheduler reads it: the types and ranges of its
    keys (a ConfigError naming `source`), so a bad file is refused when the model loads."""
    for cls in SCHEDULERS.values():
        cls.config_class.from_dict(config, source)
