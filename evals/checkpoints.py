"""The `checkpoints:` entries of a sweep: validated, expanded into checkpoints, each described by
what its result is keyed by (absolute path, step, id) and labelled by (run name, step).

An entry is a string (a .pt export, a checkpoint dir, a run dir or a glob of those) or a mapping
of one of the FORMS below. A new form (e.g. a published open_clip model) adds its fields to FORMS
and a function to EXPANDERS that turns the entry into `Checkpoint`s; LOADERS maps a checkpoint's
`kind` to the function that loads it for the runner.
"""
import dataclasses
import glob
import os

from evals.results import checkpoint_id
from llip import run_dir as rd
from llip.cli import ConfigError
from llip.config import from_dict
from llip.models import open_clip_format, pretrained


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    path: str  # absolute (or an open_clip subject "openclip:NAME@PRETRAINED")
    name: str  # the run name of its config
    step: int
    loss: str
    kind: str = "llip"  # key of LOADERS

    @property
    def id(self) -> str:
        return checkpoint_id(self.path, self.step)

    @property
    def label(self) -> str:
        return f"{self.name}__step{self.step:08d}"


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """A checkpoint that matched an entry but cannot be evaluated: its tasks fail, not the
    sweep."""
    path: str
    reason: str


# mapping forms: the key that names the form -> {field: (type, required)}
FORMS = {"path": {"path": (str, True), "all": (bool, False)},
         "openclip": {"openclip": (str, True), "pretrained": (str, False)}}


def validate_entry(entry, where: str) -> dict:
    if isinstance(entry, str):
        return {"path": entry, "all": False}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: a checkpoints entry must be a path or a mapping "
                          f"({' | '.join(FORMS)}: ...), got {entry!r}")
    form = [key for key in FORMS if key in entry]
    if len(form) != 1:
        raise ConfigError(f"{where}: checkpoints entry {entry!r} needs exactly one of "
                          f"{', '.join(FORMS)}")
    fields = FORMS[form[0]]
    for key, value in entry.items():
        if key not in fields:
            raise ConfigError(f"{where}: checkpoints entry {entry!r}: unknown key '{key}' "
                              f"(known: {', '.join(fields)})")
        if not isinstance(value, fields[key][0]):
            raise ConfigError(f"{where}: checkpoints entry {entry!r}: '{key}' must be a "
                              f"{fields[key][0].__name__}, got {value!r}")
    missing = [k for k, (_, required) in fields.items() if required and k not in entry]
    if missing:
        raise ConfigError(f"{where}: checkpoints entry {entry!r} misses '{missing[0]}'")
    return {"all": False, **entry}


def describe(path: str):
    """A checkpoint path -> Checkpoint, or Unreadable with the reason (read without loading
    weights: config.yaml and COMPLETE of a checkpoint dir, a memory-mapped .pt)."""
    path = os.path.abspath(path)
    try:
        if os.path.isfile(path):
            blob = pretrained.read_weights(path)  # weights_only / safetensors: never runs code
            if pretrained.is_export(blob):
                cfg = from_dict(blob["config"])
                return Checkpoint(path, cfg.name, int(blob["step"]), cfg.loss)
            # a released Llip checkpoint: its config is the one its shapes match
            cfg = pretrained.config_for(pretrained.state_dict_of(blob, path), path)
            return Checkpoint(path, os.path.splitext(os.path.basename(path))[0], 0, cfg.loss)
        cfg = rd.read_config(path)
        return Checkpoint(path, cfg.name, rd.step_of(path), cfg.loss)
    except (ConfigError, OSError, ValueError, KeyError, TypeError) as exn:
        return Unreadable(path, str(exn) if isinstance(exn, ConfigError)
                          else f"{type(exn).__name__}: {exn}")


def _expand_path(entry) -> list:
    pattern = entry["path"]
    matches = sorted(glob.glob(pattern)) or ([pattern] if os.path.exists(pattern) else [])
    if not matches:
        raise ConfigError(f"checkpoint {pattern} matches nothing: fix the path or glob")
    found = []
    for path in matches:
        if os.path.isfile(path) or rd.is_complete(path):
            found.append(describe(path))
        elif not rd.complete_checkpoints(path):
            found.append(Unreadable(os.path.abspath(path), "no complete checkpoint here: give "
                                    "a run dir, a checkpoints/step_* dir or an exported .pt"))
        elif entry["all"]:
            found.extend(describe(p) for p in rd.complete_checkpoints(path))
        else:
            found.append(describe(rd.latest(path)))
    return found


def _expand_openclip(entry) -> list:
    """An open_clip model as an eval subject; unknown names or tags fail while planning."""
    spec = open_clip_format.subject_spec(entry["openclip"], entry.get("pretrained", ""))
    return [Checkpoint(spec, open_clip_format.subject_tag(spec), 0, "clip", kind="openclip")]


EXPANDERS = {"path": _expand_path, "openclip": _expand_openclip}


def expand(entries) -> list:
    """Validated entries -> one Checkpoint or Unreadable per distinct checkpoint, in order."""
    found = {}
    for entry in entries:
        form = next(key for key in FORMS if key in entry)
        for ckpt in EXPANDERS[form](entry):
            found.setdefault((ckpt.path, getattr(ckpt, "kind", "")), ckpt)
    return list(found.values())


def load(checkpoint: Checkpoint, device):
    return LOADERS[checkpoint.kind](checkpoint.path, device)


LOADERS = {"llip": rd.load_model, "openclip": rd.load_model}
