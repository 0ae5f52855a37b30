"""The module system: configs, parameter slots, modules, and hooks into a forward pass.

A component (the text encoder, the UNet, the VAE) is a tree of modules. A module holds its
parameters as attributes named after the checkpoint keys, so the dotted path of a parameter
(`to_out.0.weight`) *is* its key in the file: `Module.named_slots` walks those paths and the
loader (weights.py) fills them. Nothing here computes; the equations are in nn.py.
"""

import contextlib
import dataclasses
import math
import types

from .errors import ConfigError


class Config:
    """Base for component configs: dataclasses filled from a checkpoint's config.json."""

    @classmethod
    def from_dict(cls, values, source="config"):
        """The config from a config.json dict, checked: each key this config knows must have the
        type its field declares, then `check` tests ranges and consistency; keys it does not know
        (`_class_name`...) are ignored. `source` (the file) is named in every error."""
        config = cls(**known_fields(cls, values, source))
        config.check(source)
        return config

    def check(self, source):
        """Raise a ConfigError for a value out of range or inconsistent with the others."""


def known_fields(cls, values, source):
    """{key: value} of the keys dataclass `cls` declares, each value checked against its annotation."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source} must hold a JSON object of settings, not a {type(values).__name__}")
    annotations = {field.name: field.type for field in dataclasses.fields(cls)}
    known = {key: value for key, value in values.items() if key in annotations}
    for key, value in known.items():
        if not fits(value, annotations[key]):
            raise ConfigError(f"{source}: {key} is {value!r:.80}, but it must be {describe(annotations[key])}")
    return known


def fits(value, annotation):
    """Whether a JSON value has the declared type (a float may be written as an integer)."""
    if isinstance(annotation, types.UnionType):
        return any(fits(value, arm) for arm in annotation.__args__)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation in (tuple, list):
        return isinstance(value, (list, tuple))
    return isinstance(value, annotation)


def describe(annotation):
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        tuple: "a list",
        list: "a list",
        type(None): "null",
    }
    arms = annotation.__args__ if isinstance(annotation, types.UnionType) else (annotation,)
    return " or ".join(names.get(arm, arm.__name__) for arm in arms)


class Rules:
    """The range checks of one config, a line each: `must(key, ok, allowed)` raises a ConfigError
    naming the file, the key, the value found and what is allowed, unless `ok`."""

    def __init__(self, source, config):
        self.source, self.config = source, config

    def __call__(self, key, ok, allowed, value=None):
        if not ok:
            value = getattr(self.config, key) if value is None else value
            raise ConfigError(f"{self.source}: {key} is {value!r:.80}, but it must be {allowed}")


def positive_integers(values):
    """Whether `values` are all integers >= 1."""
    return all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in values)


class Param:
    """An empty parameter slot of known shape; the loader replaces it by an array."""

    def __init__(self, *shape):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)

    def __repr__(self):
        return f"Param{self.shape}"


class Module:
    """A bag of parameters and child modules, addressed by dotted checkpoint keys."""

    def named_slots(self, prefix=""):
        """Yield (key, owner, attribute, value) for every parameter below this module.

        Children may be modules, lists of modules (keys `resnets.0`, `resnets.1`, ...) or dicts
        of modules (keys given by the dict, for checkpoint lists with weightless gaps).
        """
        for name, value in vars(self).items():
            key = prefix + name
            if isinstance(value, Module):
                yield from value.named_slots(key + ".")
            elif isinstance(value, (list, dict)):
                items = value.items() if isinstance(value, dict) else enumerate(value)
                for index, child in items:
                    if isinstance(child, Module):
                        yield from child.named_slots(f"{key}.{index}.")
            elif isinstance(value, Param) or _is_array(value):
                yield key, self, name, value

    def parameters(self):
        """{key: array} for every parameter, in declaration order."""
        return {key: value for key, _, _, value in self.named_slots()}

    def named_modules(self, prefix=""):
        """Yield (key, module) for every module below this one, each parent before its children."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                children = [(prefix + name, value)]
            elif isinstance(value, (list, dict)):
                items = value.items() if isinstance(value, dict) else enumerate(value)
                children = [(f"{prefix}{name}.{index}", child) for index, child in items if isinstance(child, Module)]
            else:
                continue
            for key, child in children:
                yield key, child
                yield from child.named_modules(key + ".")


@contextlib.contextmanager
def forward_hooks(root, callback, before=None):
    """While the `with` block runs, call `callback(key, module, args, output)` after every call
    of a module below `root`; `key` is its checkpoint path ("down_blocks.0.resnets.1"), and
    `before(key, module, args)`, if given, as the call begins (the roofline times layers so).

    A window into a forward pass for the chapters (chapter 7 lists the shape of every layer and
    draws cross-attention maps with it), in the spirit of PyTorch's forward hooks, that leaves the
    layer code as it is: the __call__ of each module class below `root` is wrapped on entry and
    given back on exit. Modules of those classes outside `root` (the VAE's ResNet blocks, when
    `root` is the UNet) are not reported. Outside a `with forward_hooks(...)` block nothing changes.
    The callback gets the arrays themselves: copy one to keep it, as the caller of a layer may
    update its output in place (a ResNet block adds the time embedding to conv1's output).
    """
    modules = list(root.named_modules())
    keys = {id(module): key for key, module in modules}
    classes = {type(module) for _, module in modules}
    own_calls = {cls: cls.__dict__.get("__call__") for cls in classes}  # None: inherited

    def hooked(cls, call):
        def call_and_report(self, *args, **kwargs):
            reported = type(self) is cls and id(self) in keys  # once per call, even through super().__call__
            if reported and before:
                before(keys[id(self)], self, args)
            output = call(self, *args, **kwargs)
            if reported:
                callback(keys[id(self)], self, args, output)
            return output

        return call_and_report

    for cls in classes:
        cls.__call__ = hooked(cls, cls.__call__)
    try:
        yield
    finally:
        for cls, call in own_calls.items():
            if call is None:
                del cls.__call__
            else:
                cls.__call__ = call


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")
