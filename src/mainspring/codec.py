"""Codec: attrs classes to and from JSON bytes, under stable type names and schema versions.

Stored data never names a Python import path: each class is registered under a name chosen by the
user (``"account.deposited"``) and a version. Reading data written under an older version runs
the chain of upcasters registered for that name (``v1 -> v2 -> v3``) on the plain JSON value
before structuring it into the current class.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, TypeVar, final

import attrs
import cattrs
import orjson
from cattrs.preconf.orjson import make_converter

from mainspring.errors import CodecError, UsageError

__all__ = [
    "Encoded",
    "Registry",
    "TypeInfo",
    "event",
    "message",
    "registry",
    "state",
]

T = TypeVar("T")
JsonDict = dict[str, Any]
Upcaster = Callable[[JsonDict], JsonDict]

_NAME_PATTERN: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.:\-]{0,199}$")
_KINDS: Final = frozenset({"event", "message", "state", "value"})


@attrs.frozen
class TypeInfo:
    """How one class is stored: its stable name, its current schema version and its kind."""

    name: str
    version: int
    cls: type[Any]
    kind: str


@attrs.define
class Encoded:
    """An encoded value: the stable type name and version it was written under, and JSON bytes.

    Not frozen (one is built for every event emitted, see ``AppendRequest``); treat it as
    immutable."""

    type_name: str
    type_version: int
    payload: bytes


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise UsageError(
            f"type name must be 1-200 characters of letters, digits, '_', '.', ':' or '-', "
            f"starting with a letter; got {name!r}. Pick a stable name such as 'account.deposited'."
        )
    return name


def _check_version(version: object) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UsageError(f"schema version must be an int >= 1, got {version!r}")
    return version


@final
class Registry:
    """Maps attrs classes to stable names and versions, and upcasts old payloads.

    One process-wide registry (``mainspring.codec.registry``) serves the decorators ``event``,
    ``message`` and ``state``; tests may build their own.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, TypeInfo] = {}
        self._by_class: dict[type[Any], TypeInfo] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self.converter: Final = make_converter()

    def register(self, cls: type[T], name: str, version: int = 1, kind: str = "value") -> type[T]:
        """Register ``cls`` under ``name`` at schema ``version``.

        Raises:
            UsageError: ``cls`` is not an attrs class, the name or version is malformed, or the
                name is already taken by another class.
        """
        _check_name(name)
        _check_version(version)
        if kind not in _KINDS:
            raise UsageError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
        if not (isinstance(cls, type) and attrs.has(cls)):
            raise UsageError(
                f"{cls!r} is not an attrs class; decorate it with @attrs.frozen before "
                f"registering it as {name!r}"
            )
        info = TypeInfo(name=name, version=version, cls=cls, kind=kind)
        existing = self._by_name.get(name)
        if existing is not None and existing.cls is not cls:
            if existing.cls.__qualname__ != cls.__qualname__:
                raise UsageError(
                    f"type name {name!r} is already registered for {existing.cls.__qualname__}; "
                    f"choose another name for {cls.__qualname__}"
                )
            # The same class defined again (a reloaded module): the newest definition wins.
            self._by_class.pop(existing.cls, None)
        previous = self._by_class.get(cls)
        if previous is not None and previous.name != name:
            raise UsageError(
                f"{cls.__qualname__} is already registered as {previous.name!r}; "
                f"a class has one stable name"
            )
        self._by_name[name] = info
        self._by_class[cls] = info
        return cls  # type: ignore[return-value]  # attrs.has() narrowed it to AttrsInstance

    def upcaster(self, name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator registering a function that turns a ``from_version`` payload of ``name``
        (a JSON dict) into a ``from_version + 1`` payload."""
        _check_name(name)
        _check_version(from_version)

        def decorate(function: Upcaster) -> Upcaster:
            key = (name, from_version)
            if key in self._upcasters and self._upcasters[key] is not function:
                raise UsageError(f"an upcaster for {name!r} v{from_version} is already registered")
            self._upcasters[key] = function
            return function

        return decorate

    def info(self, cls: type[Any]) -> TypeInfo:
        """The registration of ``cls``.

        Raises:
            CodecError: ``cls`` was never registered.
        """
        info = self._by_class.get(cls)
        if info is None:
            raise CodecError(
                f"{cls.__qualname__} is not registered; decorate it with "
                f"@mainspring.event/message/state('some.name', version=1)"
            )
        return info

    def info_by_name(self, name: str) -> TypeInfo:
        """The registration named ``name``.

        Raises:
            CodecError: no class is registered under ``name``.
        """
        info = self._by_name.get(name)
        if info is None:
            raise CodecError(
                f"no class is registered under type name {name!r}; import the module that "
                f"registers it before reading this data"
            )
        return info

    def is_registered(self, cls: type[Any]) -> bool:
        """Whether ``cls`` has a registration."""
        return cls in self._by_class

    def encode(self, value: object) -> Encoded:
        """Encode a registered attrs instance."""
        cls = type(value)
        info = self._by_class.get(cls) or self.info(cls)
        try:
            # The converter's own hook for the class, straight to orjson: the same bytes as
            # ``converter.dumps``, with two calls less on the path of every event.
            payload = orjson.dumps(self.converter.get_unstructure_hook(cls)(value))
        except Exception as error:
            raise CodecError(f"cannot encode {info.name!r}: {error}") from error
        return Encoded(info.name, info.version, payload)

    def decode(self, type_name: str, type_version: int, payload: bytes) -> Any:
        """Decode a payload written under ``type_name`` at ``type_version``, upcasting it to the
        class's current version when needed.

        Raises:
            CodecError: unknown name, a version newer than the code, a missing upcaster, or a
                payload that does not fit the class.
        """
        info = self.info_by_name(type_name)
        try:
            if type_version == info.version:
                return self.converter.loads(payload, info.cls)
            data = self.upcast(type_name, type_version, orjson.loads(payload))
            return self.converter.structure(data, info.cls)
        except CodecError:
            raise
        except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as error:
            raise CodecError(
                f"cannot decode {type_name!r} v{type_version} into "
                f"{info.cls.__qualname__} v{info.version}: {error}"
            ) from error

    def upcast(self, type_name: str, type_version: int, data: JsonDict) -> JsonDict:
        """Run the upcaster chain from ``type_version`` to the current version of ``type_name``."""
        info = self.info_by_name(type_name)
        if type_version > info.version:
            raise CodecError(
                f"{type_name!r} v{type_version} was written by newer code than this "
                f"(which knows v{info.version}); deploy the newer code to read it"
            )
        version = type_version
        while version < info.version:
            function = self._upcasters.get((type_name, version))
            if function is None:
                raise CodecError(
                    f"no upcaster from {type_name!r} v{version} to v{version + 1}; register one "
                    f"with @registry.upcaster({type_name!r}, from_version={version})"
                )
            data = function(data)
            if not isinstance(data, dict):
                raise CodecError(
                    f"the upcaster of {type_name!r} v{version} returned "
                    f"{type(data).__name__}, expected dict"
                )
            version += 1
        assert version == info.version
        return data

    def dumps_plain(self, value: object) -> bytes:
        """Encode any value cattrs can unstructure (primitives, attrs classes, lists, dicts)."""
        try:
            return self.converter.dumps(value)
        except Exception as error:
            raise CodecError(f"cannot encode {type(value).__name__} value: {error}") from error

    def loads_plain(self, payload: bytes, cls: type[T]) -> T:
        """Decode bytes from ``dumps_plain`` into ``cls``."""
        try:
            return self.converter.loads(payload, cls)
        except Exception as error:
            raise CodecError(f"cannot decode into {cls!r}: {error}") from error

    def to_value(self, value: object) -> JsonDict:
        """A value of any registered or plain JSON type as a JSON envelope naming its type, so
        ``from_value`` gives back the same class.

        Raises:
            CodecError: the value cannot be represented as JSON.
        """
        info = self._by_class.get(type(value))
        try:
            data = self.converter.unstructure(value)
            orjson.dumps(data)
        except (TypeError, ValueError, RecursionError, orjson.JSONEncodeError) as error:
            raise _unencodable(value, error) from error
        if info is None:
            return {"d": data}
        return {"t": info.name, "v": info.version, "d": data}

    def from_value(self, envelope: object, cls: type[Any] | None = None) -> Any:
        """Inverse of ``to_value``; an untyped envelope is structured as ``cls`` when given."""
        if not isinstance(envelope, dict) or "d" not in envelope:
            raise CodecError(f"not a value envelope: {str(envelope)[:80]!r}")
        type_name = envelope.get("t")
        if type_name is None:
            data = envelope["d"]
            if cls is None or cls is Any or (isinstance(cls, type) and isinstance(data, cls)):
                return data
            try:
                return self.converter.structure(data, cls)
            except Exception as error:
                raise CodecError(
                    f"cannot read {str(data)[:80]!r} as {getattr(cls, '__qualname__', cls)}: "
                    f"{error}"
                ) from error
        info = self.info_by_name(type_name)
        data = envelope["d"]
        if envelope["v"] != info.version:
            data = self.upcast(type_name, envelope["v"], data)
        return self.converter.structure(data, info.cls)

    def dumps_any(self, value: object) -> bytes:
        """Encode a value of any registered or plain JSON type with its type name, so
        ``loads_any`` gives back the same class (used for replies stored for deduplication).

        Raises:
            CodecError: the value cannot be represented as JSON.
        """
        info = self._by_class.get(type(value))
        try:
            if info is None:
                return orjson.dumps({"d": self.converter.unstructure(value)})
            return orjson.dumps(
                {"t": info.name, "v": info.version, "d": self.converter.unstructure(value)}
            )
        except (TypeError, ValueError, RecursionError, orjson.JSONEncodeError) as error:
            raise _unencodable(value, error) from error

    def loads_any(self, payload: bytes) -> Any:
        """Inverse of ``dumps_any``."""
        envelope = orjson.loads(payload)
        if not isinstance(envelope, dict) or "d" not in envelope:
            raise CodecError(f"not a value envelope: {payload[:80]!r}")
        type_name = envelope.get("t")
        if type_name is None:
            return envelope["d"]
        info = self.info_by_name(type_name)
        data = envelope["d"]
        if envelope["v"] != info.version:
            data = self.upcast(type_name, envelope["v"], data)
        return self.converter.structure(data, info.cls)


registry: Final = Registry()
"""The process-wide registry used by ``event``, ``message`` and ``state`` and by nodes."""


def _decorator(kind: str, name: str, version: int) -> Callable[[type[T]], type[T]]:
    _check_name(name)
    _check_version(version)

    def decorate(cls: type[T]) -> type[T]:
        return registry.register(cls, name, version, kind=kind)

    return decorate


def event(name: str, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Class decorator: register an attrs event class under a stable ``name`` and ``version``."""
    return _decorator("event", name, version)


def message(name: str, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Class decorator: register an attrs message (command) class under a stable name."""
    return _decorator("message", name, version)


def state(name: str, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Class decorator: register an attrs state class, so snapshots of it can be upcast."""
    return _decorator("state", name, version)


def _unencodable(value: object, error: BaseException) -> CodecError:
    """The error for a value that has no JSON form: what it is, why, and what to use instead."""
    reason = (
        "it nests too deeply or contains itself"
        if isinstance(error, RecursionError) or "Recursion limit" in str(error)
        else str(error)
    )
    return CodecError(
        f"cannot encode a {type(value).__qualname__} as JSON ({reason}); use plain JSON "
        "values or an attrs class registered with @mainspring.event/message/state"
    )
