"""The `checkpoints:` entries of a sweep: validated, expanded into checkpoints, each described by
what its result is keyed by (absolute path, step, id) and labelled by (run name, step).

An entry is a string (an export, a released Llip file, a checkpoint dir, a run dir or a glob of
those) or a mapping of one of the FORMS below: {path: ..., all: true} for every checkpoint of a
run, {path: released.pt, config: NAME} for a released Llip file in a named config (else chosen
from its shapes), {openclip: NAME, pretrained: PATH_OR_TAG} for an open_clip model. A new form
adds its fields to FORMS and a function to EXPANDERS that turns an entry into `Checkpoint`s;
LOADERS maps a checkpoint's `kind` to the function that loads it for the runner.
"""
import dataclasses
import glob
import os

from llip.errors import ConfigError, UserError
from llip.evaluation.results import checkpoint_id
from llip.loading import checkpoint_info, load_model, subject_spec, subject_tag
from llip.run_dir import complete_checkpoints, is_complete, latest


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    path: str  # absolute (an open_clip model: its "openclip:NAME@PRETRAINED" spec)
    name: str  # the run name of its config
    step: int
    loss: str
    kind: str = "llip"  # key of LOADERS
    config: str = ""  # a released Llip file's config, when the sweep names one

    @property
    def id(self) -> str:  # a named config is part of what the result is of
        return checkpoint_id(self.path + (f"\nconfig={self.config}" if self.config else ""),
                             self.step)

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
FORMS = {"path": {"path": (str, True), "all": (bool, False), "config": (str, False)},
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


def checkpoint_of(path: str, config: str = ""):
    """A checkpoint path -> Checkpoint, or Unreadable with the reason (llip.loading's
    checkpoint_info: cheap for ours). Our checkpoints are labelled by their run name; a foreign
    file (a released Llip checkpoint, in `config` if named) by its file name."""
    path = os.path.abspath(path)
    try:
        cfg, step, ours = checkpoint_info(path, config)
    except (UserError, OSError, ValueError, KeyError, TypeError) as exn:
        return Unreadable(path, str(exn) if isinstance(exn, UserError)
                          else f"{type(exn).__name__}: {exn}")
    name = cfg.name if ours else os.path.splitext(os.path.basename(path))[0]
    return Checkpoint(path, name, step, cfg.loss, config=config)


def _expand_path(entry) -> list:
    pattern = entry["path"]
    matches = sorted(glob.glob(pattern)) or ([pattern] if os.path.exists(pattern) else [])
    if not matches:
        raise ConfigError(f"checkpoint {pattern} matches nothing: fix the path or glob")
    found = []
    for path in matches:
        if os.path.isfile(path) or is_complete(path):
            found.append(checkpoint_of(path, entry.get("config", "")))
        elif not complete_checkpoints(path):
            found.append(Unreadable(os.path.abspath(path), "no complete checkpoint here: give "
                                    "a run dir, a checkpoints/step_* dir or an exported .pt"))
        elif entry["all"]:
            found.extend(checkpoint_of(p) for p in complete_checkpoints(path))
        else:
            found.append(checkpoint_of(latest(path)))
    return found


def _expand_openclip(entry) -> list:
    """{openclip: NAME, pretrained: PATH_OR_TAG}: an open_clip model, checked while planning
    (an unknown name or tag is bad sweep input), loaded only by its tasks."""
    spec = subject_spec(entry["openclip"], entry.get("pretrained", ""))
    return [Checkpoint(spec, subject_tag(spec), 0, "clip", kind="openclip")]


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
    named = {"config": checkpoint.config} if checkpoint.config else {}  # a released file's
    return LOADERS[checkpoint.kind](checkpoint.path, device, **named)


LOADERS = {"llip": load_model, "openclip": load_model}
