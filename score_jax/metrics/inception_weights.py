"""FID Inception weights from a local file, without torch: .pth, the JAX ports' pickle, or .npz.

Accepted files (`eval.inception_weights`):
- pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`: a torch state dict, read by a restricted
  unpickler that rebuilds numpy arrays from the storages; both torch layouts are read, the zip
  archive (torch >= 1.6: `<dir>/data.pkl`, `<dir>/data/<key>`) and the legacy stream (magic
  number, protocol, system info, the pickle, then each storage as an int64 count and raw bytes).
- the pickle of jax-fid / fidjax (`inception_v3_weights_fid.pickle`): a nested dict with the same
  module names, `{'Mixed_5b': {'branch1x1': {'conv': {'kernel' [kh, kw, I, O]}, 'bn': {'scale',
  'bias', 'mean', 'var'}}}, ..., 'fc': {'kernel' [2048, 1008], 'bias'}}` (format read from
  their source; checked here against the network's shapes, as no copy of the file is at hand).
- an `.npz` holding the pytorch-fid state dict under its own keys
  (`Mixed_5b.branch1x1.conv.weight`).
"""

from __future__ import annotations

import collections
import functools
import io
import os
import struct
import zipfile
from typing import Any, BinaryIO, Callable, NamedTuple

import jax
import numpy as np

from score_jax import paths
from score_jax.errors import InvalidInputError, MissingFileError
from score_jax.metrics import weights_cache
from score_jax.safe_files import (BYTES_GLOBALS, DamagedFileError, RestrictedUnpickler,
                                  check_numeric_tree, load_npz, reading, require_file)

PTH_NAME = "pt_inception-2015-12-05-6726825d.pth"
PTH_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
           "pt_inception-2015-12-05-6726825d.pth")
# SHA-256 of pytorch-fid's release file (95,628,359 bytes; its name carries the first 8 digits,
# torch hub's convention).
PTH_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
PICKLE_NAME = "inception_v3_weights_fid.pickle"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_WHAT = "FID Inception weights file"

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands for a torch storage class (`torch.FloatStorage`) named in the pickle."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _strided(storage: np.ndarray, offset: int, size: tuple, stride: tuple) -> np.ndarray:
    """A tensor as torch rebuilds it: a strided view of a flat storage, copied."""
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    return np.array(view)


class _Pending(NamedTuple):
    """A legacy-layout tensor whose storage bytes come after the pickle."""

    key: str
    offset: int
    size: tuple
    stride: tuple


def _check_view(storage_size: int, offset: int, size: tuple, stride: tuple, key: Any) -> None:
    """Raise unless the strided view (offset, size, stride) lies inside a storage of storage_size.

    numpy's as_strided does not check bounds, so a hostile file could otherwise read memory
    outside the storage.
    """
    ints = [offset, *size, *stride]
    if (len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints)
            or len(size) > 8):
        raise DamagedFileError(f"tensor on storage {key!r}: invalid view offset {offset!r}, "
                               f"size {size!r}, stride {stride!r}")
    if 0 in size:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage_size:
        raise DamagedFileError(f"tensor on storage {key!r} reaches element {last}, past the "
                               f"storage's {storage_size}")


class _TorchUnpickler(RestrictedUnpickler):
    """Unpickles a torch state dict of tensors; any global but the few it needs is refused.

    `load_storage(pid)` turns a persistent id ('storage', type, key, location, numel, ...) into
    what `rebuild(storage, offset, size, stride)` takes.
    """

    def __init__(self, file: Any, path: str, load_storage: Callable[[tuple], Any],
                 rebuild: Callable[[Any, int, tuple, tuple], Any]):
        allowed = {("torch", name): _StorageType(name) for name in _STORAGE_DTYPES}
        # Trailing arguments (requires_grad, hooks, metadata) mean nothing to numpy.
        rebuild_tensor = lambda storage, offset, size, stride, *_: rebuild(  # noqa: E731
            storage, offset, tuple(size), tuple(stride))
        allowed.update({
            ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
            ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
            ("collections", "OrderedDict"): collections.OrderedDict, **BYTES_GLOBALS})
        super().__init__(file, allowed, path=path, what=_WHAT)
        self._load_storage = load_storage

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise DamagedFileError(f"unsupported persistent id {str(pid)[:100]} in the weights file")
        return self._load_storage(pid)


def _check_state_dict(result: Any, path: str) -> dict[str, Any]:
    """`result` as a dict when it is a mapping of string keys (a state dict), else DamagedFileError."""
    if not isinstance(result, dict) or not all(isinstance(k, str) for k in result):
        raise DamagedFileError(f"{path}: holds a {type(result).__name__}, not a state dict")
    return dict(result)


def _load_zip_pth(data: bytes, path: str) -> dict[str, np.ndarray]:
    """State dict of a torch zip checkpoint: `<dir>/data.pkl` plus storages `<dir>/data/<key>`."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise DamagedFileError(
                f"{path}: a torch zip checkpoint holds one data.pkl, found {pkl}")
        prefix = pkl[0][:-len("data.pkl")]

        def load_storage(pid: tuple) -> np.ndarray:
            raw = archive.read(f"{prefix}data/{pid[2]}")
            return np.frombuffer(raw, dtype=pid[1].dtype.newbyteorder("<"))

        def rebuild(storage: np.ndarray, offset: int, size: tuple, stride: tuple) -> np.ndarray:
            _check_view(storage.size, offset, size, stride, "?")
            return _strided(storage, offset, size, stride)

        with archive.open(pkl[0]) as f:
            return _check_state_dict(_TorchUnpickler(f, path, load_storage, rebuild).load(), path)


def _plain_record(f: BinaryIO, path: str) -> Any:
    """One pickled record of plain data (numbers, strings, dicts): no global is admitted."""
    return RestrictedUnpickler(f, {}, path=path, what=_WHAT).load()


def _load_legacy_pth(data: bytes, path: str) -> dict[str, np.ndarray]:
    """State dict of a torch checkpoint in the pre-1.6 stream layout (storages after the pickle)."""
    # In memory: a damaged length field then reads what is there instead of allocating it.
    f, size = io.BytesIO(data), len(data)
    with f:
        if _plain_record(f, path) != _LEGACY_MAGIC:
            raise DamagedFileError(f"{path}: not a torch checkpoint (no zip, no legacy magic)")
        _plain_record(f, path)  # protocol version
        _plain_record(f, path)  # system info (byte order, type sizes)
        dtypes: dict[str, np.dtype] = {}

        def load_storage(pid: tuple) -> str:
            if len(pid) > 5 and pid[5] is not None:
                raise DamagedFileError(f"{path}: storage views are not supported")
            dtypes[pid[2]] = pid[1].dtype
            return pid[2]

        result = _check_state_dict(_TorchUnpickler(f, path, load_storage, _Pending).load(), path)
        keys = _plain_record(f, path)
        if not isinstance(keys, list) or not all(k in dtypes for k in keys):
            raise DamagedFileError(f"{path}: the storage list does not match the tensors")
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            dtype = dtypes[key].newbyteorder("<")
            if not 0 <= count * dtype.itemsize <= size - f.tell():
                raise DamagedFileError(f"{path}: storage {key!r} claims {count} elements, more "
                                       f"than the file holds")
            storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    out = {}
    for name, t in result.items():
        if isinstance(t, _Pending):
            if t.key not in storages:
                raise DamagedFileError(f"{path}: tensor {name!r} has no storage")
            _check_view(storages[t.key].size, t.offset, t.size, t.stride, t.key)
            t = _strided(storages[t.key], t.offset, t.size, t.stride)
        out[name] = t
    return out


def load_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torch state dict file (zip or legacy layout) -> {key: numpy array}, without torch.

    Raises:
      UnsafeFileError: the pickle names a global a state dict never needs (nothing was run).
      DamagedFileError: the file is not a readable torch state dict of tensors.
    """
    path = require_file(path, _WHAT)
    with reading(path, _WHAT):
        data = paths.resolve(path).read_bytes()  # local or gs://
        load = _load_zip_pth if zipfile.is_zipfile(io.BytesIO(data)) else _load_legacy_pth
        state_dict = load(data, path)
        check_numeric_tree(state_dict, path, _WHAT)
        return state_dict


def _port_globals() -> dict[tuple[str, str], Any]:
    """The globals of a pickled nested dict of numpy arrays (the JAX ports' weights)."""
    from numpy._core import multiarray

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict, **BYTES_GLOBALS}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


def load_port_pickle(path: str | os.PathLike) -> dict:
    """The nested dict of numpy arrays in a jax-fid / fidjax weights pickle; nothing else admitted."""
    path = require_file(path, _WHAT)
    with reading(path, _WHAT):
        tree = RestrictedUnpickler(io.BytesIO(paths.resolve(path).read_bytes()), _port_globals(),
                                   path=path, what=_WHAT).load()
        check_numeric_tree(tree, path, _WHAT)
        return tree


def _set(tree: dict, path: list[str], value: np.ndarray) -> None:
    """tree[path[0]][path[1]]... = value, creating the dicts on the way."""
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


_STATE_DICT_LEAVES = {  # pytorch-fid leaf -> (flax collection, flax name, OIHW -> HWIO?)
    "conv.weight": ("params", ["conv", "kernel"], True),
    "bn.weight": ("params", ["bn", "scale"], False),
    "bn.bias": ("params", ["bn", "bias"], False),
    "bn.running_mean": ("batch_stats", ["bn", "mean"], False),
    "bn.running_var": ("batch_stats", ["bn", "var"], False),
}


def convert_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
    """pytorch-fid `Inception3` state dict -> Flax variables {'params', 'batch_stats'} (NHWC).

    Convolution weights go from OIHW to HWIO, the fc weight is transposed; AuxLogits (not part
    of the FID graph) and `num_batches_tracked` are dropped.
    """
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, value in state_dict.items():
        if key.startswith("AuxLogits.") or key.endswith("num_batches_tracked"):
            continue
        value = np.asarray(value, np.float32)
        if key in ("fc.weight", "fc.bias"):
            _set(variables["params"], ["fc", "kernel" if key == "fc.weight" else "bias"],
                 value.T if key == "fc.weight" else value)
            continue
        parts = key.split(".")
        leaf = ".".join(parts[-2:])
        if leaf not in _STATE_DICT_LEAVES:
            raise InvalidInputError(f"unexpected key {key!r} in the Inception state dict")
        collection, names, transpose = _STATE_DICT_LEAVES[leaf]
        _set(variables[collection], parts[:-2] + names,
             value.transpose(2, 3, 1, 0) if transpose else value)
    return variables


def convert_port_pickle(tree: dict) -> dict:
    """jax-fid / fidjax weight tree (bn mean/var beside the params) -> Flax variables."""
    variables: dict = {"params": {}, "batch_stats": {}}

    def walk(node: dict, path: list[str]) -> None:
        for name, child in node.items():
            if name == "bn":
                for leaf in ("scale", "bias"):
                    _set(variables["params"], path + ["bn", leaf], np.asarray(child[leaf]))
                for leaf in ("mean", "var"):
                    _set(variables["batch_stats"], path + ["bn", leaf], np.asarray(child[leaf]))
            elif name == "conv":
                _set(variables["params"], path + ["conv", "kernel"], np.asarray(child["kernel"]))
            elif path == [] and name == "fc":
                for leaf in ("kernel", "bias"):
                    _set(variables["params"], ["fc", leaf], np.asarray(child[leaf]))
            elif name != "AuxLogits" and isinstance(child, dict):
                walk(child, path + [name])

    walk(tree, [])
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), variables)


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple]:
    """Shapes of the FID Inception variables, from an abstract initialisation (no FLOPs)."""
    from score_jax.metrics.inception import INCEPTION_SIZE, FIDInception

    x = jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), np.float32)
    shapes = jax.eval_shape(lambda x: FIDInception().init(jax.random.PRNGKey(0), x), x)
    return {jax.tree_util.keystr(k): tuple(s.shape)
            for k, s in jax.tree_util.tree_flatten_with_path(shapes)[0]}


def check_variables(variables: dict, path: str) -> None:
    """Raises InvalidInputError unless `variables` has the FID Inception's names and shapes."""
    want = _expected_shapes()
    got = {jax.tree_util.keystr(k): tuple(np.shape(v))
           for k, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or wrong:
        detail = "; ".join(f"{label}: {names[:3]}{' ...' if len(names) > 3 else ''}"
                           for label, names in (("missing", missing), ("unexpected", extra),
                                                ("wrong shape", wrong)) if names)
        raise InvalidInputError(
            f"{path} does not hold the FID Inception (2015-12-05) weights: {detail}. "
            f"Use pytorch-fid's {PTH_NAME} ({PTH_URL}) or the JAX ports' {PICKLE_NAME}.")


def missing_weights_message(path: str) -> str:
    """The one-paragraph explanation of where FID Inception weights come from."""
    return (
        f"FID Inception weights not found at {path!r} (config field eval.inception_weights). "
        "score_jax computes FID/IS/KID with the 2015-12-05 Inception graph of TF-GAN and "
        "pytorch-fid but ships no weights (95 MB); with eval.inception_weights empty it downloads "
        "pytorch-fid's file once into the cache ($SCORE_JAX_CACHE or ~/.cache/score_jax). "
        "Accepted files: "
        f"pytorch-fid's {PTH_NAME} (published at {PTH_URL}), the jax-fid / fidjax pickle "
        f"{PICKLE_NAME} (published by github.com/matthias-wright/jax-fid), or an .npz of the "
        "pytorch-fid state dict. Copy one onto this machine and set "
        "--config.eval.inception_weights=/path/to/file.")


def weights_file(path: str, url: str, sha256: str) -> str:
    """The weights file to read: `path` when given, else the cached copy of `url` (downloaded and
    checked against `sha256` if needed).

    Raises:
      MissingFileError: no `path` and the download failed; one paragraph on where weights come from.
      InvalidInputError: the download did not have the expected SHA-256 (it was deleted).
    """
    if path:
        return path
    try:
        return os.fspath(weights_cache.fetch(url, sha256, PTH_NAME))
    except weights_cache.DownloadError as e:
        target = os.fspath(weights_cache.cache_dir() / PTH_NAME)
        raise MissingFileError(f"{missing_weights_message(target)} Tried: {e}") from None


def load_inception_params(path: str | os.PathLike) -> dict:
    """FID Inception Flax variables {'params', 'batch_stats'} from a local weights file.

    Raises:
      MissingFileError: no file at `path` (the message says which files work and where to get them).
      UnsafeFileError: the file asks for code to run (a pickled global no weights file needs);
        nothing from it was run.
      InvalidInputError: the file is not one of the accepted formats, is damaged, or lacks layers.
    """
    path = os.fspath(path)
    if not paths.resolve(path).is_file():
        raise MissingFileError(missing_weights_message(path))
    if path.endswith((".pickle", ".pkl")):
        tree, convert = load_port_pickle(path), convert_port_pickle
    else:
        tree = load_npz(path, _WHAT) if path.endswith(".npz") else load_pth(path)
        convert = convert_state_dict
    with reading(path, _WHAT):  # a damaged file can hold a state dict of unexpected structure
        variables = convert(tree)
    check_variables(variables, path)
    return variables
