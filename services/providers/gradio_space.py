"""What a Gradio Space says about itself in ``GET /config``, and how an ``ImageSpec`` becomes its inputs.

``/config`` is what the Space's own web page loads, so every Gradio version serves it (4.x, 5.x and
6.x alike, on the bare app URL): ``version``, ``api_prefix`` (absent on Gradio 4: no prefix),
``protocol`` (``sse_v3`` and its kin: the ``/queue/join`` protocol), ``components`` (id, type,
``props`` with ``label``, ``minimum``, ``maximum``, ``value``, ``choices``) and ``dependencies``
(the endpoints: ``api_name``, input component ids, ``id`` = the ``fn_index`` to call).

Inputs are mapped by the component's label and type (prompt, negative prompt, seed, randomize
seed, width, height, style); every other input gets the Space's own default. A seed is folded
into the seed slider's range (FLUX-style Spaces stop at 2**31-1, Forgeline's seeds go to
2**32-1); any other number outside its slider is refused before the call.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from services.common.contracts import ImageSpec

__all__ = ["SPEC_FIELDS", "SpaceApi", "SpaceConfigError", "SpaceEndpoint", "SpaceInput"]

SPEC_FIELDS = ("prompt", "negative_prompt", "seed", "width", "height", "style", "randomize_seed")
_NUMERIC = {"slider", "number"}


class SpaceConfigError(ValueError):
    """The Space cannot take this call as configured (no such endpoint, wrong inputs, out of range)."""


@dataclass(frozen=True)
class SpaceInput:
    """One input component of an endpoint."""

    label: str
    type: str  # the component's type: "textbox", "slider", "number", "checkbox", "dropdown"…
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def field(self) -> str | None:
        """The ``ImageSpec`` field this input takes, read from its label (None: it keeps its default)."""
        words = re.sub(r"[^a-z0-9]+", " ", self.label.lower())
        if self.type == "checkbox":
            return "randomize_seed" if "random" in words else None
        if self.type in ("textbox", "dropdown", "radio"):
            if "negative" in words:
                return "negative_prompt"
            return "prompt" if "prompt" in words else "style" if "style" in words else None
        if self.type in _NUMERIC:
            return next((name for name in ("seed", "width", "height") if name in words.split()), None)
        return None

    def checked(self, value: Any, *, fold: bool = False) -> Any:
        """``value`` as this input accepts it: folded into range with ``fold`` (a seed), else refused outside it."""
        if self.type not in _NUMERIC or not isinstance(value, int | float) or isinstance(value, bool):
            return value
        low, high = self.minimum, self.maximum
        if fold and low is not None and high is not None and not low <= value <= high:
            span = int(high) - int(low) + 1
            return int(low) + (int(value) - int(low)) % span
        if (low is not None and value < low) or (high is not None and value > high):
            raise SpaceConfigError(f"{self.label!r} must be between {_number(low)} and {_number(high)}, "
                                   f"got {_number(value)}")
        return value

    def describe(self) -> str:
        bounds = f" {_number(self.minimum)}–{_number(self.maximum)}" if self.maximum is not None else ""
        return f"{self.label or '(no label)'} ({self.type}{bounds})"


@dataclass(frozen=True)
class SpaceEndpoint:
    api_name: str
    fn_index: int
    inputs: tuple[SpaceInput, ...]

    def values(self, spec: ImageSpec, slots: list[Any] | None) -> list[Any]:
        """The ``data`` list for a call: from explicit ``slots`` (``GradioConfig.inputs``) or by name."""
        if slots is None:
            fields = [item.field for item in self.inputs]
            if "prompt" not in fields:  # a Space whose prompt box has another label: the first textbox
                first = next((i for i, item in enumerate(self.inputs) if item.type == "textbox"), None)
                if first is None:
                    raise SpaceConfigError(f"/{self.api_name} has no text input for the prompt; it takes "
                                           f"{self.describe()}: give `inputs` explicitly")
                fields[first] = "prompt"
            slots = [field if field is not None else {"value": item.default}
                     for field, item in zip(fields, self.inputs, strict=True)]
        elif len(slots) != len(self.inputs):
            raise SpaceConfigError(f"`inputs` lists {len(slots)} values but /{self.api_name} takes "
                                   f"{len(self.inputs)}: {self.describe()}")
        seed = spec.seed
        if seed is None:  # any seed will do, but a Number input refuses null
            seed_input = next((item for item in self.inputs if item.field == "seed"), None)
            high = seed_input.maximum if seed_input is not None and seed_input.maximum is not None else 2**31 - 1
            seed = random.randint(0, int(high))
        return [item.checked(_slot_value(slot, spec, seed), fold=slot == "seed")
                for slot, item in zip(slots, self.inputs, strict=True)]

    def describe(self) -> str:
        return ", ".join(item.describe() for item in self.inputs) or "no inputs"


@dataclass(frozen=True)
class SpaceApi:
    """The parts of a Space's ``/config`` the adapter uses; read once per Space."""

    version: str
    api_prefix: str
    protocol: str
    endpoints: dict[str, SpaceEndpoint]

    @property
    def major(self) -> int:
        head = self.version.split(".", 1)[0]
        return int(head) if head.isdigit() else 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SpaceApi:
        components = {c.get("id"): c for c in config.get("components") or [] if isinstance(c, dict)}
        endpoints: dict[str, SpaceEndpoint] = {}
        for index, dependency in enumerate(config.get("dependencies") or []):
            name = dependency.get("api_name") if isinstance(dependency, dict) else None
            if not isinstance(name, str) or not name or name in endpoints:
                continue  # unnamed events (a button's JS, a .then()) are not callable by name
            inputs = tuple(_input(components.get(i) or {}) for i in dependency.get("inputs") or [])
            fn_index = dependency.get("id")
            endpoints[name.lstrip("/")] = SpaceEndpoint(name.lstrip("/"), fn_index if isinstance(fn_index, int)
                                                        else index, inputs)
        prefix = config.get("api_prefix")
        return cls(version=str(config.get("version") or "unknown"),
                   api_prefix=prefix.rstrip("/") if isinstance(prefix, str) else "",
                   protocol=str(config.get("protocol") or "unknown"), endpoints=endpoints)

    def endpoint(self, api_name: str) -> SpaceEndpoint:
        found = self.endpoints.get(api_name.lstrip("/"))
        if found is None:
            offered = ", ".join(f"/{name}" for name in self.endpoints) or "none"
            raise SpaceConfigError(f"the Space has no endpoint /{api_name.lstrip('/')}; it offers: {offered}")
        return found


def _input(component: dict[str, Any]) -> SpaceInput:
    props = component.get("props") if isinstance(component.get("props"), dict) else {}
    return SpaceInput(label=str(props.get("label") or ""), type=str(component.get("type") or "unknown"),
                      default=props.get("value"), minimum=_float_or_none(props.get("minimum")),
                      maximum=_float_or_none(props.get("maximum")))


def _slot_value(slot: Any, spec: ImageSpec, seed: int) -> Any:
    if isinstance(slot, dict):
        return slot["value"]
    if not isinstance(slot, str):
        return slot  # a number, bool or None given as is
    if slot == "seed":
        return seed
    if slot == "randomize_seed":
        return spec.seed is None  # the Space's own random seed only when the job has none
    if slot in ("negative_prompt", "style"):
        return getattr(spec, slot) or ""  # a Textbox wants a string, not null
    return getattr(spec, slot)


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else str(value)
