"""A checkpoint directory as a list of items, whatever wrote it: tensors (their chunks' bytes located, not
read) and objects (pickled values, decoded by chaos.state.unpickle).

Two on-disk forms cover every Megatron-LM `--ckpt-format` and chaos's own trainer:
- torch.distributed.checkpoint (`.metadata` + `*.distcp`: torch_dist, fsdp_dtensor, torch_dcp, chaos's gpt3):
  `.metadata` maps each key to its chunks (global offsets, sizes) and each chunk to a byte range of a shard
  file, where one torch.save archive holds it. Read on CPU with no process group: chunk by chunk.
- Megatron's legacy `torch` format: `mp_rank_*/model_optim_rng.pt`, one torch.save archive per
  model-parallel rank (and `common.pt`, torch_dist's older home of its non-sharded state, when present).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from chaos.state.archive import Archive
from chaos.state.files import CheckpointDamage, CheckpointFile
from chaos.state.unpickle import ITEM_BYTES, DType, Opaque, TensorRef, safe_loads

DCP_METADATA = ".metadata"


class UnsupportedCheckpoint(Exception):
    """Readable, but in a form chaos does not read (compressed DCP records, an unknown layout)."""


@dataclass
class Chunk:
    """One stored piece of a tensor: where it sits in the global tensor, and how to stream its bytes."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    blocks: Callable[[], Iterator[bytes]]
    """Raw little-endian bytes of the chunk's elements in C order, in blocks (opens and reads on demand)."""


@dataclass
class TensorItem:
    key: str
    dtype: str
    shape: tuple[int, ...]
    chunks: list[Chunk]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEM_BYTES.get(self.dtype, 0)


@dataclass
class ObjectItem:
    key: str
    value: Any
    """The decoded object graph; tensors inside it are TensorRef (see tensor_item)."""


@dataclass
class Checkpoint:
    directory: Path
    form: str
    """dcp | torch (Megatron's legacy format)."""
    items: list[TensorItem | ObjectItem]
    files: dict[str, int] = field(default_factory=dict)
    """relative path -> size of every file the items are read from."""
    _open: dict[str, CheckpointFile] = field(default_factory=dict)

    def close(self) -> None:
        for file in self._open.values():
            file.close()
        self._open.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensor_item(key: str, tensor: TensorRef) -> TensorItem:
    """A tensor found inside an object (a pickled value, a legacy archive) as a one-chunk TensorItem."""
    archive = tensor.storage.archive
    zeros = tuple(0 for _ in tensor.shape)
    return TensorItem(key, tensor.dtype, tensor.shape,
                      [Chunk(zeros, tensor.shape, lambda: archive.tensor_blocks(tensor))])


def open_checkpoint(directory: Path) -> Checkpoint:
    """The checkpoint in `directory`, in whichever form it is. Raises CheckpointDamage (a finding) or
    UnsupportedCheckpoint (cannot judge it)."""
    directory = Path(directory)
    if not directory.is_dir() or directory.is_symlink():
        raise CheckpointDamage(f"{directory.name} is not a directory")
    if (directory / DCP_METADATA).exists() or (directory / DCP_METADATA).is_symlink():
        return _open_dcp(directory)
    if list(directory.glob("mp_rank_*/*.pt")):
        return _open_legacy(directory)
    raise UnsupportedCheckpoint(f"{directory.name} holds neither a DCP checkpoint ({DCP_METADATA}) nor Megatron's "
                                f"legacy mp_rank_*/model_optim_rng.pt")


# ---- torch.distributed.checkpoint ----------------------------------------------------------------------
def _open_dcp(directory: Path) -> Checkpoint:
    checkpoint = Checkpoint(directory, "dcp", [])
    metadata = _fields(_load_metadata(checkpoint), "the DCP metadata")
    storage = _storage_index(metadata.get("storage_data"))
    entries = metadata.get("state_dict_metadata")
    if not isinstance(entries, dict):
        raise CheckpointDamage(f"{DCP_METADATA}: no state_dict_metadata mapping")
    for key, entry in entries.items():
        key = str(key)
        if isinstance(entry, Opaque) and entry.global_name.endswith(".BytesStorageMetadata"):
            info = storage.get((key, None))
            if info is None:
                raise CheckpointDamage(f"{DCP_METADATA}: {key} has no stored record")
            archive = _archive(checkpoint, info, f"{info.get('relative_path')}: {key}")
            checkpoint.items.append(ObjectItem(key, archive.load()))
        else:
            fields = _fields(entry, f"{DCP_METADATA}: entry {key}")
            if not isinstance(fields.get("chunks"), list):
                raise CheckpointDamage(f"{DCP_METADATA}: entry {key} is neither a tensor nor a stored object")
            checkpoint.items.append(_dcp_tensor(checkpoint, key, fields, storage))
    if (directory / "common.pt").is_file():  # torch_dist's older layout kept the common state apart
        checkpoint.items.append(_legacy_archive(checkpoint, "common.pt", "common"))
    return checkpoint


def _load_metadata(checkpoint: Checkpoint) -> Any:
    file = _file(checkpoint, DCP_METADATA)
    data = file.read(0, file.size, DCP_METADATA)
    try:
        return safe_loads(data)
    except Exception as error:  # noqa: BLE001 - a damaged pickle is a finding
        raise CheckpointDamage(f"{DCP_METADATA} is not readable ({type(error).__name__}: {error})") from None


def _fields(value: Any, what: str) -> dict:
    fields = value.fields() if isinstance(value, Opaque) else value if isinstance(value, dict) else None
    if not isinstance(fields, dict):
        raise CheckpointDamage(f"{what} is not what DCP writes (got {value!r:.80})")
    return fields


def _storage_index(storage_data: Any) -> dict[tuple[str, tuple | None], dict]:
    """(key, chunk offsets or None) -> {relative_path, offset, length, transform_descriptors}."""
    if not isinstance(storage_data, dict):
        raise CheckpointDamage(f"{DCP_METADATA}: no storage_data mapping")
    out = {}
    for index, info in storage_data.items():
        index_fields = _fields(index, f"{DCP_METADATA}: a storage index")
        info_fields = _fields(info, f"{DCP_METADATA}: a storage record")
        offset = index_fields.get("offset")
        key = (str(index_fields.get("fqn")), tuple(offset) if offset is not None else None)
        out[key] = info_fields
    return out


def _dcp_tensor(checkpoint: Checkpoint, key: str, fields: dict, storage: dict) -> TensorItem:
    properties, dtype = fields.get("properties"), None
    if isinstance(properties, Opaque):  # TensorProperties: a tuple state (dtype first), or fields in older torch
        state = properties.state
        dtype = state[0] if isinstance(state, tuple) and state else (properties.fields() or {}).get("dtype")
    if not isinstance(dtype, DType) or dtype.name not in ITEM_BYTES:
        raise UnsupportedCheckpoint(f"{key}: element type {dtype!r} is not one chaos reads")
    shape = tuple(int(s) for s in fields.get("size") or ())
    chunks = []
    for chunk in fields["chunks"]:
        chunk_fields = _fields(chunk, f"{DCP_METADATA}: a chunk of {key}")
        offsets = tuple(int(o) for o in chunk_fields.get("offsets") or ())
        sizes = tuple(int(s) for s in chunk_fields.get("sizes") or ())
        info = storage.get((key, offsets))
        if info is None:
            raise CheckpointDamage(f"{DCP_METADATA}: the chunk of {key} at {list(offsets)} has no stored record")
        chunks.append(Chunk(offsets, sizes, _chunk_reader(checkpoint, key, dtype.name, offsets, sizes, info)))
    chunks.sort(key=lambda c: c.offsets)
    return TensorItem(key, dtype.name, shape, chunks)


def _chunk_reader(checkpoint: Checkpoint, key: str, dtype: str, offsets: tuple, sizes: tuple, info: dict):
    def blocks() -> Iterator[bytes]:
        what = f"{info.get('relative_path')}: {key} at {list(offsets)}"
        tensor = _archive(checkpoint, info, what).load()
        if not isinstance(tensor, TensorRef):
            raise CheckpointDamage(f"{what}: holds {type(tensor).__name__}, not a tensor")
        if tensor.dtype != dtype or tensor.shape != sizes:
            raise CheckpointDamage(f"{what}: holds a {tensor.dtype} tensor of shape {list(tensor.shape)}, the "
                                   f"metadata says {dtype} {list(sizes)}")
        yield from tensor.storage.archive.tensor_blocks(tensor)
    return blocks


def _archive(checkpoint: Checkpoint, info: dict, what: str) -> Archive:
    if info.get("transform_descriptors"):
        raise UnsupportedCheckpoint(f"{what}: stored through DCP stream transforms {info['transform_descriptors']} "
                                    "(compression), which chaos does not read")
    relative, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
    if not isinstance(relative, str) or not isinstance(offset, int) or not isinstance(length, int):
        raise CheckpointDamage(f"{what}: a storage record without path, offset and length")
    return Archive(_file(checkpoint, relative), offset, length, what)


def _file(checkpoint: Checkpoint, relative: str) -> CheckpointFile:
    file = checkpoint._open.get(relative)
    if file is None:
        file = CheckpointFile(checkpoint.directory, relative)
        checkpoint._open[relative] = file
        checkpoint.files[relative] = file.size
    return file


# ---- Megatron's legacy torch format -----------------------------------------------------------------------
def _open_legacy(directory: Path) -> Checkpoint:
    checkpoint = Checkpoint(directory, "torch", [])
    for path in sorted(directory.glob("mp_rank_*/*.pt")):
        relative = path.relative_to(directory).as_posix()
        checkpoint.items.append(_legacy_archive(checkpoint, relative, path.parent.name))
    return checkpoint


def _legacy_archive(checkpoint: Checkpoint, relative: str, key: str) -> ObjectItem:
    file = _file(checkpoint, relative)
    return ObjectItem(key, Archive(file, 0, file.size, relative).load())
