"""torch.save archives, read without torch, in both of torch's serializations:

- zip (torch.save's default): `<name>/data.pkl` (the object graph, whose tensors name storages by key) and
  `<name>/data/<key>` (each storage's raw little-endian bytes, stored uncompressed). DCP writes one per item
  inside its `*.distcp` shard files; Megatron's legacy `torch` format is one per model-parallel rank.
- legacy (`_use_new_zipfile_serialization=False`, what torch still uses for a storage pickled with plain
  pickle): a magic-number pickle, a protocol-version pickle, a system-info pickle, the object graph, the
  sorted list of storage keys, then each storage as an int64 element count and its raw bytes.

The graph is read with chaos.state.unpickle (nothing in it runs); a tensor's bytes are located in the file and
streamed from there, never loaded whole.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import Any, Iterator

from chaos.state.files import BLOCK_BYTES, CheckpointDamage, MemoryFile
from chaos.state.unpickle import ITEM_BYTES, SafeUnpickler, StorageRef, StorageType, TensorRef, safe_loads

_LOCAL_HEADER = struct.Struct("<4s22xHH")
"""A zip local file header: signature, then (after 22 bytes) the name and extra field lengths."""


class _Storages:
    """What both serializations share: streaming a tensor's bytes once its storage is located."""

    file: Any
    what: str

    def storage_range(self, storage: StorageRef) -> tuple[int, int]:
        raise NotImplementedError

    def tensor_blocks(self, tensor: TensorRef, block: int = BLOCK_BYTES) -> Iterator[bytes]:
        """The tensor's elements' raw bytes in C order, in blocks (a contiguous tensor is streamed from the
        file; a strided view, rare in checkpoints, is gathered from its whole storage)."""
        itemsize = ITEM_BYTES[tensor.dtype]
        start, size = self.storage_range(tensor.storage)
        if tensor.numel == 0:
            return
        if tensor.contiguous:
            begin = tensor.offset * itemsize
            length = tensor.numel * itemsize
            if tensor.offset < 0 or begin + length > size:
                raise CheckpointDamage(f"{self.what}: a tensor reaches past its storage {tensor.storage.key}")
            yield from self.file.blocks(start + begin, length, f"{self.what}: storage {tensor.storage.key}",
                                        block - block % itemsize)
            return
        import numpy as np

        last = tensor.offset + sum((s - 1) * st for s, st in zip(tensor.shape, tensor.stride))
        if tensor.offset < 0 or last * itemsize >= size or any(st < 0 for st in tensor.stride):
            raise CheckpointDamage(f"{self.what}: a strided tensor reaches outside its storage {tensor.storage.key}")
        raw = np.frombuffer(self.file.read(start, size, f"{self.what}: storage {tensor.storage.key}"), dtype=np.uint8)
        elements = raw.view(np.dtype(f"V{itemsize}"))
        view = np.lib.stride_tricks.as_strided(elements[tensor.offset:], shape=tensor.shape,
                                               strides=tuple(s * itemsize for s in tensor.stride))
        data = np.ascontiguousarray(view).tobytes()
        for begin in range(0, len(data), block):
            yield data[begin:begin + block]

    def _storage_ref(self, pid: Any) -> StorageRef:
        # persistent ids: ('storage', storage class, key, location, numel[, view metadata (legacy)])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointDamage(f"{self.what}: a persistent id chaos does not understand: {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        dtype = storage_type.dtype if isinstance(storage_type, StorageType) else None
        if dtype is None:
            name = getattr(storage_type, "name", None) or getattr(storage_type, "global_name", repr(storage_type))
            raise CheckpointDamage(f"{self.what}: storage type {name} is not one chaos reads")
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointDamage(f"{self.what}: storage {key} has an invalid size {numel!r:.40}")
        return StorageRef(key=key, dtype=dtype, numel=numel, archive=self)


class Archive(_Storages):
    """One zip torch.save archive at [offset, offset + length) of a file (chaos.state.files.CheckpointFile or
    MemoryFile)."""

    def __init__(self, file: Any, offset: int, length: int, what: str) -> None:
        self.file, self.offset, self.length, self.what = file, offset, length, what
        try:
            self._zip = zipfile.ZipFile(file.view(offset, length, what))
            infos = self._zip.infolist()
        except CheckpointDamage:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
            raise CheckpointDamage(f"{what}: not a torch.save archive ({error})") from None
        pickles = [info for info in infos if info.filename.endswith("/data.pkl") or info.filename == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointDamage(f"{what}: not a torch.save archive (expected one data.pkl, found {len(pickles)})")
        self._pickle = pickles[0]
        self.prefix = self._pickle.filename[: -len("data.pkl")]
        self._records = {info.filename: info for info in infos}
        order = self._records.get(f"{self.prefix}byteorder")
        if order is not None and self._read_record(order) not in (b"little", b"little\n"):
            raise CheckpointDamage(f"{what}: a big-endian archive (only little-endian is read)")

    # ---- the object graph ------------------------------------------------------------------------------
    def load(self) -> Any:
        """The archive's object graph: tensors as TensorRef (bytes not read)."""
        data = self._read_record(self._pickle)
        try:
            return safe_loads(data, self._storage_ref)
        except CheckpointDamage:
            raise
        except Exception as error:  # noqa: BLE001 - any malformation of a pickle is damage, never a crash
            raise CheckpointDamage(f"{self.what}: its pickle is damaged ({type(error).__name__}: {error})") from None

    def _read_record(self, info: zipfile.ZipInfo) -> bytes:
        start, size = self._record_range(info)
        return self.file.read(start, size, f"{self.what}: {info.filename}")

    def _record_range(self, info: zipfile.ZipInfo) -> tuple[int, int]:
        """(absolute offset in the file, size) of a record's bytes: torch stores records uncompressed."""
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CheckpointDamage(f"{self.what}: {info.filename} is compressed (torch.save stores records as they are)")
        header_at = self.offset + info.header_offset
        header = self.file.read(header_at, _LOCAL_HEADER.size, f"{self.what}: {info.filename} header")
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
        if signature != b"PK\x03\x04":
            raise CheckpointDamage(f"{self.what}: {info.filename} has no zip header where the directory says")
        start = header_at + _LOCAL_HEADER.size + name_length + extra_length
        if start + info.file_size > self.offset + self.length:
            raise CheckpointDamage(f"{self.what}: {info.filename} runs past the end of the archive (truncated?)")
        return start, info.file_size

    # ---- tensor bytes ------------------------------------------------------------------------------------
    def storage_range(self, storage: StorageRef) -> tuple[int, int]:
        info = self._records.get(f"{self.prefix}data/{storage.key}")
        if info is None:
            raise CheckpointDamage(f"{self.what}: storage {storage.key} is missing from the archive")
        start, size = self._record_range(info)
        needed = storage.numel * ITEM_BYTES[storage.dtype]
        if size < needed:
            raise CheckpointDamage(f"{self.what}: storage {storage.key} has {size} bytes, {needed} expected "
                                   f"({storage.numel} x {storage.dtype})")
        return start, needed



class LegacyArchive(_Storages):
    """A torch.save archive in torch's legacy serialization (see the module docstring), held in memory."""

    MAGIC = 0x1950A86A20F9469CFC6C
    PROTOCOL = 1001

    def __init__(self, data: bytes, what: str) -> None:
        self.file, self.what = MemoryFile(data, what), what
        self._ranges: dict[str, tuple[int, int]] = {}

    def load(self) -> Any:
        stream = io.BytesIO(self.file.data)
        refs: dict[str, StorageRef] = {}

        def storage(pid: Any) -> StorageRef:
            ref = self._storage_ref(pid)
            refs.setdefault(ref.key, ref)
            return refs[ref.key]

        try:
            if SafeUnpickler(stream).load() != self.MAGIC or SafeUnpickler(stream).load() != self.PROTOCOL:
                raise CheckpointDamage(f"{self.what}: not a torch.save archive (no magic number)")
            SafeUnpickler(stream).load()  # system info (byte order, sizes of C types)
            graph = SafeUnpickler(stream, storage).load()
            keys = SafeUnpickler(stream).load()
        except CheckpointDamage:
            raise
        except Exception as error:  # noqa: BLE001 - any malformation of a pickle is damage, never a crash
            raise CheckpointDamage(f"{self.what}: its pickle is damaged ({type(error).__name__}: {error})") from None
        if not isinstance(keys, list):
            raise CheckpointDamage(f"{self.what}: no list of storage keys")
        position = stream.tell()
        for key in keys:
            ref = refs.get(str(key))
            if ref is None:
                raise CheckpointDamage(f"{self.what}: storage {key} is listed but never used")
            (count,) = struct.unpack("<q", self.file.read(position, 8, f"{self.what}: storage {key} size"))
            size = count * ITEM_BYTES[ref.dtype]
            self.file.check_range(position + 8, size, f"{self.what}: storage {key}")
            self._ranges[ref.key] = (position + 8, size)
            position += 8 + size
        return graph

    def storage_range(self, storage: StorageRef) -> tuple[int, int]:
        found = self._ranges.get(storage.key)
        if found is None:
            raise CheckpointDamage(f"{self.what}: storage {storage.key} is missing from the archive")
        return found


def load_archive_bytes(data: bytes) -> Any:
    """The object graph of an archive held in memory (nested inside a pickle), in either serialization."""
    what = "a nested torch.save archive"
    if data[:4] == b"PK\x03\x04":
        return Archive(MemoryFile(data, what), 0, len(data), what).load()
    return LegacyArchive(data, what).load()
