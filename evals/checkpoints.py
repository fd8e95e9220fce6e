"""The `checkpoints:` entries of a sweep: validated, expanded into checkpoints, each described by
what its result is keyed by (absolute path, step, id) and labelled by (run name, step).

An entry is a string (an export, a released Llip file, a checkpoint dir, a run dir or a glob of
those) or a mapping of one of the FORMS below: {path: ..., all: true} for every checkpoint of a
run, {openclip: NAME, pretrained: PATH_OR_TAG} for an open_clip model. A new form adds its
fields to FORMS and a function to EXPANDERS that turns an entry into `Checkpoint`s; LOADERS maps
a checkpoint's `kind` to the function that loads it for the runner.
"""
import dataclasses
import glob
import os

from evals.results import checkpoint_id
from llip import run_dir as rd
from llip.cli import ConfigError
from llip.config import from_dict
from llip.models import open_clip_format
from llip.models.pretrained import is_export, read_weights


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    path: str  # absolute (an open_clip model: its "openclip:NAME@PRETRAINED" spec)
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
    return validate_form(entry, form[0], where)


def validate_form(entry: dict, form: str, where: str) -> dict:
    fields = FORMS[form]
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
    return {"all": False, **entry} if form == "path" else dict(entry)


def describe(path: str):
    """A checkpoint path -> Checkpoint, or Unreadable with the reason. Cheap for our own
    checkpoints (config.yaml and COMPLETE of a checkpoint dir, a memory-mapped export); a
    foreign file (a released Llip checkpoint) is loaded once to learn its config."""
    path = os.path.abspath(path)
    try:
        if os.path.isfile(path):
            blob = read_weights(path)  # weights_only / safetensors: never runs code
            if is_export(blob):
                cfg = from_dict(blob["config"])
                return Checkpoint(path, cfg.name, int(blob.get("step", 0)), cfg.loss)
            # a released Llip checkpoint: the loader's own answer for its config and step
            _, cfg, step = rd.load_model(path, "cpu")
            return Checkpoint(path, os.path.splitext(os.path.basename(path))[0], step, cfg.loss)
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
    """{openclip: NAME, pretrained: PATH_OR_TAG}: an open_clip model, checked while planning
    (an unknown name or tag is bad sweep input), loaded only by its tasks."""
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
