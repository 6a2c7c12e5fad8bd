"""Reads the pickles inside checkpoints without running them.

A pickle names functions and classes and asks the reader to call them; Python's own pickle (and torch.load
with weights_only=False) does, so a pickle can run anything. chaos reads checkpoints it did not write, possibly
as root, so no name in a pickle is ever looked up: `find_class` hands back a stand-in instead.

- Harmless builtins (dict, list, set, complex...) and the few constructors a checkpoint needs are emulated
  here: torch's tensor rebuilders become a TensorRef (where the bytes are, never loaded), numpy's array
  reconstruction becomes a NumpyArray (its raw bytes, read as numbers only for plain numeric dtypes),
  torch dtypes and storage classes become their names.
- Every other class becomes an Opaque record: its name, the arguments it was to be made from and the state
  it was to receive (argparse.Namespace, Megatron's enums, DCP's metadata dataclasses). Nothing is created.

What a pickle can still do is describe a large structure cheaply (shared references); the walks over the
result (chaos.state.fingerprint) bound their depth and size.
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass
from typing import Any, Callable

STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "Float8_e4m3fnStorage": "float8_e4m3fn",
    "Float8_e5m2Storage": "float8_e5m2", "UInt16Storage": "uint16", "UInt32Storage": "uint32",
    "UInt64Storage": "uint64",
}
"""torch's typed storage classes, as a torch.save archive names them, -> the element type."""

ITEM_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
              "int8": 1, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16, "float8_e4m3fn": 1,
              "float8_e5m2": 1, "uint16": 2, "uint32": 4, "uint64": 8}

TORCH_DTYPES = set(ITEM_BYTES) | {"float", "double", "half", "long", "int", "short", "cfloat", "cdouble", "bfloat16"}


# ---- what a pickle becomes ---------------------------------------------------------------------------
@dataclass
class StorageRef:
    """A torch storage of an archive: `numel` elements of `dtype` in the archive's record `key`."""

    key: str
    dtype: str
    numel: int
    archive: Any = None
    """The chaos.state.archive.Archive holding its bytes (set while that archive's pickle is read)."""


@dataclass
class TensorRef:
    """A tensor as torch.save describes it: a view (offset, shape, stride in elements) of a storage."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def contiguous(self) -> bool:
        expected, running = [], 1
        for size in reversed(self.shape):
            expected.append(running)
            running *= size
        return all(size == 1 or a == b for size, a, b in zip(self.shape, self.stride, reversed(expected)))


@dataclass(frozen=True)
class DType:
    """A torch dtype named in a pickle (torch.float32)."""

    name: str

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class NumpyArray:
    """numpy.ndarray's pickled form: dtype, shape and raw bytes; `values()` reads plain numeric ones."""

    def __init__(self, *args: Any) -> None:
        self.dtype: str | None = None
        self.byteorder = "="
        self.shape: tuple[int, ...] = ()
        self.raw: bytes | None = None
        self.objects: list | None = None
        self.fortran = False

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, rawdata): rawdata is bytes for numeric dtypes, a list for objects
        if not isinstance(state, tuple) or len(state) < 5:
            return
        _, shape, dtype, fortran, raw = state[:5]
        self.shape = tuple(shape) if isinstance(shape, tuple) else ()
        self.fortran = bool(fortran)
        if isinstance(dtype, NumpyDType):
            self.dtype, self.byteorder = dtype.name, dtype.byteorder
        if isinstance(raw, (bytes, bytearray)):
            self.raw = bytes(raw)
        elif isinstance(raw, list):
            self.objects = raw

    def values(self):
        """The array as numbers (numpy), or None when it holds objects or an unknown dtype."""
        import numpy as np

        if self.raw is None or self.dtype is None:
            return None
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            return None
        if dtype.kind not in "biufc" or dtype.hasobject:
            return None
        if self.byteorder in "<>":
            dtype = dtype.newbyteorder(self.byteorder)
        if math.prod(self.shape) * dtype.itemsize != len(self.raw):
            return None
        return np.frombuffer(self.raw, dtype=dtype).reshape(self.shape, order="F" if self.fortran else "C")


class NumpyDType:
    """numpy.dtype's pickled form: numpy.dtype('u4', False, True) then its state (byte order...)."""

    def __init__(self, name: Any = None, *args: Any) -> None:
        self.name = name if isinstance(name, str) else None
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], str):
            self.byteorder = state[1]


class Opaque:
    """An object of a class chaos does not make: what it was to be made from, never made."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Opaque":
        self = object.__new__(cls)
        self.args = args
        self.state = None
        self.items: dict = {}
        self.list: list = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS on a dict subclass
        self.items[key] = value

    def append(self, value: Any) -> None:  # APPENDS on a list subclass
        self.list.append(value)

    def extend(self, values: Any) -> None:
        self.list.extend(values)

    def fields(self) -> dict | None:
        """Its attributes, where its state is a plain mapping (dataclasses, argparse.Namespace)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]} if isinstance(state[0], dict) or state[0] is None else state
        return state if isinstance(state, dict) else None

    def __repr__(self) -> str:
        return f"<{self.global_name}>"


_OPAQUE_CLASSES: dict[str, type] = {}


def opaque_class(module: str, name: str) -> type:
    full = f"{module}.{name}"
    cls = _OPAQUE_CLASSES.get(full)
    if cls is None:
        cls = type(name if name.isidentifier() else "Opaque", (Opaque,), {"global_name": full, "__module__": "chaos.opaque"})
        _OPAQUE_CLASSES[full] = cls
    return cls


# ---- emulated constructors -----------------------------------------------------------------------------
def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *rest: Any) -> Any:
    if not isinstance(storage, StorageRef):
        return opaque_class("torch._utils", "_rebuild_tensor_v2")(storage, offset, shape, stride)
    return TensorRef(storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data  # a Parameter is its tensor


def _rebuild_from_type(function: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    if function in (_rebuild_tensor, _rebuild_parameter) and isinstance(args, tuple):
        return function(*args)  # a tensor subclass (Parameter...) is its tensor
    return opaque_class("torch._tensor", "_rebuild_from_type_v2")(function, new_type, args, state)


def _codecs_encode(text: Any, encoding: str = "utf-8", *rest: Any) -> Any:
    # protocol-2 pickles (torch.save's) write bytes as _codecs.encode(str, "latin1")
    if isinstance(text, str) and encoding in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        return text.encode(encoding)
    return opaque_class("_codecs", "encode")(text, encoding)


def _numpy_reconstruct(cls: Any, shape: Any = None, dtype: Any = None) -> NumpyArray:
    return NumpyArray()


def _numpy_scalar(dtype: Any, raw: Any = None) -> Any:
    import numpy as np

    if isinstance(dtype, NumpyDType) and dtype.name and isinstance(raw, bytes):
        try:
            numpy_dtype = np.dtype(dtype.name)
        except TypeError:
            numpy_dtype = None
        if numpy_dtype is not None and numpy_dtype.kind in "biufc" and numpy_dtype.itemsize == len(raw):
            return np.frombuffer(raw, dtype=numpy_dtype)[0].item()
    return opaque_class("numpy", "scalar")(dtype, raw)


def _torch_size(*args: Any) -> Any:
    return tuple(args[0]) if args and isinstance(args[0], (tuple, list)) else ()


def _layout(name: Any = None) -> Any:
    return name if isinstance(name, str) else None  # already "torch.strided"


def _device(*args: Any) -> Any:
    return ":".join(str(a) for a in args)


def _safe_set(*args: Any) -> Any:
    return set(args[0]) if args else set()


def _safe_frozenset(*args: Any) -> Any:
    return frozenset(args[0]) if args else frozenset()


def _safe_complex(real: Any = 0, imag: Any = 0) -> Any:
    if isinstance(real, (int, float)) and isinstance(imag, (int, float)):
        return complex(real, imag)
    return opaque_class("builtins", "complex")(real, imag)


def _safe_slice(*args: Any) -> Any:
    return slice(*args[:3])


def _dict(*args: Any) -> dict:
    # OrderedDict / defaultdict / dict as REDUCE targets: their items arrive later (SETITEMS); an argument
    # is an iterable of pairs (OrderedDict) or a default factory (defaultdict): keep only the former.
    if args and isinstance(args[0], (list, tuple)):
        try:
            return dict(args[0])
        except (TypeError, ValueError):
            return {}
    return {}


class _Dict(dict):
    """dict for NEWOBJ (which needs a class): OrderedDict pickled with protocol 2 goes through it."""


def _nested_archive(data: Any) -> Any:
    """torch.storage._load_from_bytes(b): a whole torch.save archive inside a pickle (a tensor pickled with
    plain pickle, as chaos's trainer does for its RNG states; torch writes these in its legacy, non-zip
    format). Read with this module's rules, never run."""
    if not isinstance(data, bytes):
        return opaque_class("torch.storage", "_load_from_bytes")(data)
    from chaos.state.archive import load_archive_bytes

    return load_archive_bytes(data)


KNOWN: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _Dict,
    ("collections", "defaultdict"): _dict,
    ("builtins", "dict"): _Dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): _safe_set,
    ("builtins", "frozenset"): _safe_frozenset,
    ("builtins", "complex"): _safe_complex,
    ("builtins", "slice"): _safe_slice,
    ("_codecs", "encode"): _codecs_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _device,
    ("torch.serialization", "_get_layout"): _layout,
    ("torch.storage", "_load_from_bytes"): _nested_archive,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): NumpyArray,
    ("numpy", "dtype"): NumpyDType,
}


class StorageType:
    """torch.FloatStorage and friends, as named in an archive's persistent ids."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPES.get(name)


class SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler that never looks a name up: see the module docstring."""

    def __init__(self, data: bytes | io.BytesIO, persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(data if isinstance(data, io.BytesIO) else io.BytesIO(data), encoding="latin1")
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        known = KNOWN.get((module, name))
        if known is not None:
            return known
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        if module == "torch" and name in TORCH_DTYPES:
            return DType(name)
        return opaque_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("a persistent id outside a torch.save archive")
        return self._persistent(pid)


def safe_loads(data: bytes, persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """The object a pickle describes, built by the rules above. Raises pickle.UnpicklingError (and the
    usual EOFError, ValueError...) on a damaged pickle; callers report those as damage."""
    return SafeUnpickler(data, persistent_load).load()


def looks_like_pickle(data: Any) -> bool:
    """Protocol 2+ pickles start with PROTO n and end with STOP."""
    return isinstance(data, bytes) and len(data) >= 3 and data[0] == 0x80 and 2 <= data[1] <= 5 and data[-1:] == b"."
