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
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from score_jax.errors import InvalidInputError, MissingFileError

PTH_NAME = "pt_inception-2015-12-05-6726825d.pth"
PTH_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
           "pt_inception-2015-12-05-6726825d.pth")
PICKLE_NAME = "inception_v3_weights_fid.pickle"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands for a torch storage class (`torch.FloatStorage`) named in the pickle."""

    def __init__(self, name: str):
        if name not in _STORAGE_DTYPES:
            raise InvalidInputError(f"unsupported torch storage type {name!r} in the weights file")
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


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict of tensors; any global but the few it needs is refused.

    `load_storage(pid)` turns a persistent id ('storage', type, key, location, numel, ...) into
    what `rebuild(storage, offset, size, stride)` takes.
    """

    def __init__(self, file: Any, load_storage: Callable[[tuple], Any],
                 rebuild: Callable[[Any, int, tuple, tuple], Any]):
        super().__init__(file)
        self._load_storage = load_storage
        self._rebuild = rebuild

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            # Trailing arguments (requires_grad, hooks, metadata) mean nothing to numpy.
            return lambda storage, offset, size, stride, *_: self._rebuild(
                storage, offset, size, stride)
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *_: data
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise InvalidInputError(
            f"the weights file refers to {module}.{name}, which a torch state dict of tensors "
            "does not need; refusing to unpickle it (is it a whole pickled model?)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise InvalidInputError(f"unsupported persistent id {pid!r} in the weights file")
        return self._load_storage(pid)


def _load_zip_pth(path: str) -> dict[str, np.ndarray]:
    """State dict of a torch zip checkpoint: `<dir>/data.pkl` plus storages `<dir>/data/<key>`."""
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise InvalidInputError(
                f"{path}: a torch zip checkpoint holds one data.pkl, found {pkl}")
        prefix = pkl[0][:-len("data.pkl")]

        def load_storage(pid: tuple) -> np.ndarray:
            raw = archive.read(f"{prefix}data/{pid[2]}")
            return np.frombuffer(raw, dtype=pid[1].dtype.newbyteorder("<"))

        with archive.open(pkl[0]) as f:
            return dict(_TorchUnpickler(f, load_storage, _strided).load())


def _load_legacy_pth(path: str) -> dict[str, np.ndarray]:
    """State dict of a torch checkpoint in the pre-1.6 stream layout (storages after the pickle)."""
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise InvalidInputError(f"{path}: not a torch checkpoint ({err})") from err
        if magic != _LEGACY_MAGIC:
            raise InvalidInputError(f"{path}: not a torch checkpoint (no zip, no legacy magic)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info (byte order, type sizes)
        dtypes: dict[str, np.dtype] = {}

        def load_storage(pid: tuple) -> str:
            if len(pid) > 5 and pid[5] is not None:
                raise InvalidInputError(f"{path}: storage views are not supported")
            dtypes[pid[2]] = pid[1].dtype
            return pid[2]

        result = _TorchUnpickler(f, load_storage, _Pending).load()
        storages = {}
        for key in pickle.load(f):
            (count,) = struct.unpack("<q", f.read(8))
            dtype = dtypes[key].newbyteorder("<")
            storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    return {name: _strided(storages[t.key], t.offset, t.size, t.stride)
            if isinstance(t, _Pending) else t for name, t in result.items()}


def load_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torch state dict file (zip or legacy layout) -> {key: numpy array}, without torch."""
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        return _load_zip_pth(path)
    return _load_legacy_pth(path)


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of numpy arrays (the JAX ports' weight pickle); nothing else."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise InvalidInputError(
            f"the weights pickle refers to {module}.{name}; only nested dicts of numpy arrays "
            f"(the {PICKLE_NAME} layout) are read")


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
        "pytorch-fid but ships no weights (95 MB) and downloads nothing. Accepted files: "
        f"pytorch-fid's {PTH_NAME} (published at {PTH_URL}), the jax-fid / fidjax pickle "
        f"{PICKLE_NAME} (published by github.com/matthias-wright/jax-fid), or an .npz of the "
        "pytorch-fid state dict. Copy one onto this machine and set "
        "--config.eval.inception_weights=/path/to/file.")


def load_inception_params(path: str | os.PathLike) -> dict:
    """FID Inception Flax variables {'params', 'batch_stats'} from a local weights file.

    Raises:
      MissingFileError: no file at `path` (the message says which files work and where to get them).
      InvalidInputError: the file is not one of the accepted formats or lacks layers.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(missing_weights_message(path))
    if zipfile.is_zipfile(path) and path.endswith(".npz"):
        with np.load(path) as data:
            variables = convert_state_dict({k: data[k] for k in data.files})
    elif path.endswith((".pickle", ".pkl")):
        with open(path, "rb") as f:
            variables = convert_port_pickle(_NumpyUnpickler(f).load())
    else:
        variables = convert_state_dict(load_pth(path))
    check_variables(variables, path)
    return variables
