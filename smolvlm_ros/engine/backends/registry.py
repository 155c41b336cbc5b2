"""Which backends exist, what each can do, and which one runs a model.

A backend is one module in this package that, when imported, calls :func:`register` with a
:class:`BackendSpec`: its name, the devices and dtypes it runs, its :class:`Capability` set, a
priority per device (for ``auto``), an availability check and a build function. Registration
must stay cheap: the availability check says *why not* (``"onnxruntime is not installed: pip
install -r requirements/cpu.txt"``) without importing the runtime (see :func:`module_check`),
and the build function imports what it needs when it runs.

Discovery imports every module of the package once (``pkgutil``), except ``base``, ``registry``
and private ``_helpers``, the first time anyone asks the registry anything: dropping a module in
the folder is all it takes to add a backend. A module whose import fails is not a crash; it is
reported as unavailable, with the error, wherever a choice is explained.

:func:`choose` turns a backend name (or ``auto``) and a resolved device into a
:class:`BackendChoice` that carries the spec and a one-line reason, which the engine keeps and
the front ends report.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.util
import pkgutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smolvlm_ros.engine.backends.base import Backend, BackendOptions
    from smolvlm_ros.models.loading import LoadedModel

AUTO = "auto"
PACKAGE = "smolvlm_ros.engine.backends"
_NOT_BACKENDS = frozenset({"base", "registry"})


class BackendError(ValueError):
    """A backend that does not exist, is not available, or cannot run what was asked."""


class Capability(enum.Enum):
    """What a backend can do beyond one prompt at a time; the engine asks before relying on it."""

    BATCHING = "batching"  # several prompts in one language-stage call
    STREAMING = "streaming"  # on_token called as each token is made
    PREFIX_REUSE = "prefix_reuse"  # prefill() once, many generations from the prefix
    SCORING = "scoring"  # score(): log-probabilities of given continuations (typed answers)
    CONSTRAINED = "constrained"  # GenerationRequest.allowed_tokens honoured (counts, grammars)


Availability = Callable[[], "str | None"]


@dataclass(frozen=True)
class BackendSpec:
    """One backend, as it registers itself."""

    name: str
    devices: tuple[str, ...]  # cpu, cuda, npu, remote, ...
    dtypes: tuple[str, ...]  # float32, bfloat16, float16, ...; the first is its default
    build: Callable[[LoadedModel, BackendOptions], Backend]
    capabilities: frozenset[Capability] = frozenset()
    priority: Mapping[str, int] = field(default_factory=dict)  # per device; higher wins `auto`
    available: Availability | None = None  # None: available; else a human reason why not
    description: str = ""
    module: str = ""  # filled in by register()
    # Whether build() uses the torch model's weights; False (a backend running its own export)
    # lets Engine.from_config skip loading them: LoadedModel.ensure_weights() loads on demand.
    needs_weights: bool = True
    # Never picked by `auto`: it needs settings of its own to work (remote: a server URL).
    explicit_only: bool = False

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def runs_on(self, device: str) -> bool:
        return _device_kind(device) in self.devices

    def priority_for(self, device: str) -> int:
        return self.priority.get(_device_kind(device), 0)

    def unavailable_reason(self) -> str | None:
        """None when the backend can run here, else why not (a failing check is a reason too)."""
        if self.available is None:
            return None
        try:
            return self.available()
        except Exception as err:  # a broken check must not take the registry down
            return f"its availability check failed: {type(err).__name__}: {err}"

    def validate(self) -> BackendSpec:
        if not self.name.isidentifier() or self.name != self.name.lower() or self.name == AUTO:
            raise BackendError(f"backend name {self.name!r}: a lower-case identifier, not 'auto'")
        if not self.devices or not self.dtypes:
            raise BackendError(f"backend {self.name!r}: declares no devices or no dtypes")
        stray = set(self.priority) - set(self.devices)
        if stray:
            raise BackendError(f"backend {self.name!r}: priority for devices it does not run on")
        if not all(isinstance(c, Capability) for c in self.capabilities):
            raise BackendError(f"backend {self.name!r}: capabilities must be Capability members")
        return self


@dataclass(frozen=True)
class BackendChoice:
    """The backend picked for an engine, and why (reported by the front ends)."""

    spec: BackendSpec
    device: str
    reason: str
    skipped: tuple[tuple[str, str], ...] = ()  # (backend or module, why not), for auto

    @property
    def name(self) -> str:
        return self.spec.name

    def supports(self, capability: Capability) -> bool:
        return self.spec.supports(capability)


def _device_kind(device: str) -> str:
    return device.split(":", 1)[0]  # cuda:1 -> cuda


def module_check(module: str, hint: str, label: str | None = None) -> Availability:
    """An availability check: is ``module`` importable? Looks, does not import."""

    def check() -> str | None:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"{label or module} is not installed: {hint}"

    return check


def _guess_name(module: str) -> str:
    """The backend a module probably registers: onnx_backend -> onnx."""
    short = module.rsplit(".", 1)[-1]
    return short.removesuffix("_backend")


class Registry:
    """Backends by name; discovers the modules of ``package`` on first use."""

    def __init__(self, package: str | None = PACKAGE) -> None:
        self.package = package
        self._specs: dict[str, BackendSpec] = {}
        self._broken: dict[str, str] = {}  # module -> why its import failed
        self._discovered = package is None
        self._lock = threading.RLock()

    # -- registration --------------------------------------------------------------------------

    def register(self, spec: BackendSpec, module: str | None = None) -> BackendSpec:
        spec = spec.validate()
        module = module or spec.module
        with self._lock:
            old = self._specs.get(spec.name)
            if old is not None and old.module != module:
                raise BackendError(
                    f"backend {spec.name!r} is registered twice: by {old.module or '?'} and by "
                    f"{module or '?'}"
                )
            spec = dataclasses.replace(spec, module=module)
            self._specs[spec.name] = spec
            return spec

    def unregister(self, name: str) -> None:
        with self._lock:
            self._specs.pop(name, None)

    def discover(self) -> None:
        """Import each backend module of the package once; failures are kept, not raised."""
        with self._lock:
            if self._discovered:
                return
            self._discovered = True  # first: a module that queries the registry must not recurse
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__, f"{self.package}."):
                short = info.name.rsplit(".", 1)[-1]
                if short in _NOT_BACKENDS or short.startswith("_"):
                    continue
                try:
                    importlib.import_module(info.name)
                except Exception as err:  # an optional runtime missing, a bug: report, go on
                    self._broken[info.name] = f"import failed: {type(err).__name__}: {err}"

    # -- queries -------------------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        """Registered backends, sorted (available or not; modules that failed are not names)."""
        self.discover()
        return tuple(sorted(self._specs))

    def specs(self) -> tuple[BackendSpec, ...]:
        self.discover()
        return tuple(self._specs[name] for name in sorted(self._specs))

    def problems(self) -> dict[str, str]:
        """Why each unavailable backend cannot run: registered ones by name, modules that failed
        to import by module."""
        self.discover()
        found = {s.name: why for s in self.specs() if (why := s.unavailable_reason()) is not None}
        return {**found, **self._broken}

    def get(self, name: str) -> BackendSpec:
        self.discover()
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        for module, why in self._broken.items():
            if _guess_name(module) == name:
                raise BackendError(f"backend {name!r} is not available: {module}: {why}")
        known = ", ".join([AUTO, *self.names()])
        raise BackendError(f"unknown backend {name!r}: expected one of {known}")

    def choose(self, name: str, device: str, dtype: str | None = None) -> BackendChoice:
        """The backend to run on ``device`` (already resolved: cpu, cuda, ...), in ``dtype``
        (None: the backend's choice). ``auto``: the available one of highest priority."""
        if name == AUTO:
            return self._auto(device, dtype)
        spec = self.get(name)
        if not spec.runs_on(device):
            raise BackendError(
                f"backend {name!r} does not run on {device} (it runs on "
                f"{', '.join(spec.devices)}): set the device to one of those, or the backend "
                f"to {AUTO}"
            )
        if dtype is not None and dtype not in spec.dtypes:
            raise BackendError(
                f"backend {name!r} does not support dtype {dtype} (it supports "
                f"{', '.join(spec.dtypes)}): set the dtype to one of those or to auto"
            )
        why = spec.unavailable_reason()
        if why is not None:
            raise BackendError(
                f"backend {name!r} is not available: {why} (or set the backend to {AUTO})"
            )
        return BackendChoice(spec, device, f"asked for {name}")

    def _auto(self, device: str, dtype: str | None) -> BackendChoice:
        candidates = sorted(
            (s for s in self.specs() if s.runs_on(device) and not s.explicit_only),
            key=lambda s: (-s.priority_for(device), s.name),
        )
        skipped: list[tuple[str, str]] = []
        chosen = None
        for spec in candidates:
            why = spec.unavailable_reason()
            if why is None and dtype is not None and dtype not in spec.dtypes:
                why = f"does not support {dtype}"
            if why is None and chosen is None:
                chosen = spec
            elif why is not None:
                skipped.append((spec.name, why))
        skipped += [(_guess_name(module), why) for module, why in self._broken.items()]
        notes = "; ".join(f"{who}: {why}" for who, why in skipped)
        if chosen is None:
            dtype_text = f" in {dtype}" if dtype is not None else ""
            raise BackendError(
                f"no backend is available for {device}{dtype_text}"
                + (f" ({notes})" if notes else " (none is registered for it)")
            )
        reason = f"{AUTO}: {chosen.name} is the best available backend for {device}"
        reason += f" ({notes})" if notes else ""
        return BackendChoice(chosen, device, reason, tuple(skipped))


REGISTRY = Registry()


def register(spec: BackendSpec) -> BackendSpec:
    """Called by a backend module at import: ``register(BackendSpec(...))``."""
    module = getattr(spec.build, "__module__", "") or ""
    return REGISTRY.register(spec, spec.module or module)


def unregister(name: str) -> None:
    REGISTRY.unregister(name)


def backend_names() -> tuple[str, ...]:
    """Registered backend names (front ends add ``auto``)."""
    return REGISTRY.names()


def get_backend(name: str) -> BackendSpec:
    return REGISTRY.get(name)


def choose(name: str, device: str, dtype: str | None = None) -> BackendChoice:
    return REGISTRY.choose(name, device, dtype)


def backend_problems() -> dict[str, str]:
    return REGISTRY.problems()
