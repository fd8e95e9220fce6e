"""The model a run starts with: built from the config, loaded from cfg.init_from unless the run
is resuming, then locked / adapted (llip.models.tuning). Every rank does the same, from the same
seed, so the ranks start identical."""
import os

from llip.errors import ConfigError
from llip.loading import init_from_weights
from llip.models import build_model
from llip.models.tuning import apply_tuning
from llip.run_dir import has_config, latest, read_config_dict


def _saved_init_from(run_dir: str) -> str:
    """init_from as the run's config.yaml has it (read raw: an older config may not parse)."""
    return read_config_dict(run_dir).get("init_from", "") if has_config(run_dir) else ""


def starting_weights(model, cfg, run_dir: str):
    """Load cfg.init_from into `model` for a new run. A run with checkpoints resumes from them
    (resume wins): fine when it was started from the same init_from (a requeued job), refused
    when init_from is new to it, since those weights would silently be ignored."""
    if not cfg.init_from:
        return None
    found = latest(run_dir)
    if found is None:
        return init_from_weights(model, cfg)
    if _saved_init_from(run_dir) == cfg.init_from:
        return f"init_from {cfg.init_from} was applied when the run started; resuming instead"
    raise ConfigError(f"init_from={cfg.init_from} but {run_dir} already has checkpoint "
                      f"{os.path.basename(found)}, and a run resumes from its own checkpoints "
                      "(resume wins): drop init_from, or start a new run with name=...")


def build_for_training(cfg, run_dir: str, is_main: bool):
    model = build_model(cfg)
    note = starting_weights(model, cfg, run_dir)
    report = apply_tuning(model, cfg)
    if is_main:
        if note:
            print(note, flush=True)
        print(report.line(), flush=True)
    return model
