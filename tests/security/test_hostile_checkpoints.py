"""Hostile checkpoint files (issue 19): each is built inside its test, byte by byte where it must be,
and must be refused in one line, without running code, crashing the process, or allocating more
than the file holds (docs/SECURITY.md)."""
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.util import CheckpointError, checkpoint_tensor_shapes, load_checkpoint
from tests.security.crafting import (
    APPENDS,
    BINPERSID,
    BUILD,
    EMPTY_LIST,
    MARK,
    NEWFALSE,
    NEWTRUE,
    NONE,
    call,
    dict_,
    get,
    global_,
    integer,
    pickle_of,
    put,
    tensor,
    text,
    tuple_,
    write_legacy_torch,
    write_safetensors,
    write_torch_zip,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def _load_in_a_child(path: Path) -> subprocess.CompletedProcess:
    """load_checkpoint(path) in a fresh interpreter (a crash or an allocation there cannot take the
    test run with it); prints REFUSED <message> or LOADED, then the child's own peak resident memory
    in MB (VmHWM: unlike ru_maxrss it does not inherit the forking test process's peak)."""
    code = ("from ldm.util import CheckpointError, load_checkpoint\n"
            "try:\n    load_checkpoint(%r)\n    print('LOADED')\n"
            "except CheckpointError as err:\n    print('REFUSED', err)\n"
            "status = open('/proc/self/status').read().split('VmHWM:')[1].split()\n"
            "print(int(status[0]) // 1024)\n" % str(path))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def _peak_memory_mb(child: subprocess.CompletedProcess) -> int:
    return int(child.stdout.split()[-1])


def _state_dict_pickle(**extra: bytes) -> bytes:
    """``{"state_dict": {"w": <2 floats in storage "0">}, **extra}``."""
    return pickle_of(dict_({"state_dict": dict_({"w": tensor("0", (2,))}), **extra}))


# ---------------------------------------------------------------------------------------------
# The cases of the issue
# ---------------------------------------------------------------------------------------------
def _object_array_from_bytes(dtype: bytes) -> bytes:
    """``numpy.ndarray((1,), dtype, b"AAAAAAAA")``: one object pointer, chosen by the file."""
    return call("numpy", "ndarray", tuple_(integer(1)), dtype, call("_codecs", "encode", text("A" * 8), text("latin1")))


@pytest.mark.parametrize("dtype", [
    text("O"),  # an object dtype given by its code
    # a real object dtype whose flags a __setstate__ from the file clears (numpy then accepts the bytes)
    call("numpy", "dtype", text("O8"), NEWFALSE, NEWTRUE)
    + tuple_(integer(3), text("|"), NONE, NONE, NONE, integer(-1), integer(-1), integer(0)) + BUILD,
], ids=["object-dtype", "dtype-setstate"])
def test_numpy_object_array_from_raw_bytes_does_not_crash_the_process(tmp_path, dtype):
    iterated = call("builtins", "set", _object_array_from_bytes(dtype))  # set() dereferences the pointer
    path = write_torch_zip(tmp_path / "pointer.ckpt", _state_dict_pickle(x=iterated), {"0": bytes(8)})
    assert path.stat().st_size < 1000
    child = _load_in_a_child(path)
    assert child.returncode == 0, f"the loader crashed (exit {child.returncode}): {child.stderr[-300:]}"
    assert child.stdout.startswith("REFUSED") and "numpy array" in child.stdout


def test_numpy_scalars_in_callback_states_still_load_as_numbers(tmp_path):
    scores = {f"score_{kind}": value for kind, value in
              (("f8", np.float64(0.25)), ("f4", np.float32(-1.5)), ("i8", np.int64(-7)), ("u1", np.uint8(200)),
               ("b1", np.bool_(True)), ("be", np.array([3.5], dtype=">f8")[0]))}
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": {"ModelCheckpoint": scores}}, tmp_path / "cb.ckpt")
    state_dict, _ = load_checkpoint(tmp_path / "cb.ckpt")
    assert list(state_dict) == ["w"]
    from ldm.util.safe_unpickling import torch_load_safely

    loaded = torch_load_safely(str(tmp_path / "cb.ckpt"), mmap=False)["callbacks"]["ModelCheckpoint"]
    assert {k: (v.dtype.kind, v.item()) for k, v in loaded.items()} == {k: (v.dtype.kind, v.item())
                                                                        for k, v in scores.items()}


@pytest.mark.parametrize("numpy_value", [
    call("numpy.core.multiarray", "scalar", call("numpy", "dtype", text("O8"), NEWFALSE, NEWTRUE), NONE),
    call("numpy._core.multiarray", "scalar", call("numpy", "dtype", text("f8"), NEWFALSE, NEWTRUE),
         call("_codecs", "encode", text("A" * 4096), text("latin1"))),
    call("numpy._core.multiarray", "scalar", call("numpy", "dtype", text("V8"), NEWFALSE, NEWTRUE),
         call("_codecs", "encode", text("A" * 8), text("latin1"))),
], ids=["object-scalar", "scalar-with-4096-bytes", "void-scalar"])
def test_numpy_values_that_are_not_plain_numbers_are_refused(tmp_path, numpy_value):
    path = write_torch_zip(tmp_path / "np.ckpt", _state_dict_pickle(score=numpy_value), {"0": bytes(8)})
    with pytest.raises(CheckpointError, match="numpy"):
        load_checkpoint(path)


def test_a_bytearray_cannot_allocate_what_the_file_does_not_hold(tmp_path):
    size = 3 * 2 ** 29  # 1.5 GB asked for by a file of 400 bytes
    path = write_torch_zip(tmp_path / "ba.ckpt", _state_dict_pickle(pad=call("builtins", "bytearray", integer(size))),
                           {"0": bytes(8)})
    assert path.stat().st_size < 1000
    child = _load_in_a_child(path)
    assert child.returncode == 0, child.stderr[-300:]
    assert child.stdout.startswith("REFUSED") and "bytearray" in child.stdout
    assert _peak_memory_mb(child) < 1024, "the bytearray was allocated"


def test_a_huge_numpy_object_array_is_never_allocated(tmp_path):
    rebuilt = (call("numpy._core.multiarray", "_reconstruct", global_("numpy", "ndarray"), tuple_(integer(0)),
                    call("_codecs", "encode", text("b"), text("latin1")))
               + tuple_(integer(1), tuple_(integer(250_000_000)), call("numpy", "dtype", text("O8"), NEWFALSE,
                                                                        NEWTRUE), NEWFALSE, EMPTY_LIST) + BUILD)
    path = write_torch_zip(tmp_path / "array.ckpt", _state_dict_pickle(history=rebuilt), {"0": bytes(8)})
    child = _load_in_a_child(path)
    assert child.returncode == 0 and child.stdout.startswith("LOADED"), child.stdout + child.stderr[-300:]
    assert _peak_memory_mb(child) < 1024, "the object array was allocated"


def test_a_compressed_member_is_refused_before_it_inflates(tmp_path):
    numel = 16 * 2 ** 20  # 64 MB of zeros in a file of ~70 kB
    data_pkl = pickle_of(dict_({"state_dict": dict_({"w": tensor("0", (numel,))})}))
    path = write_torch_zip(tmp_path / "bomb.ckpt", data_pkl, {"0": bytes(4 * numel)}, compress=True)
    assert path.stat().st_size < 200_000
    with pytest.raises(CheckpointError, match="is compressed .*refusing to load it") as err:
        load_checkpoint(path)
    _one_line(err)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_storage_declared_larger_than_its_data_is_refused(tmp_path, layout):
    if layout == "zip":
        data_pkl = pickle_of(dict_({"state_dict": dict_({"w": tensor("0", (500_000_000,))})}))
        path = write_torch_zip(tmp_path / "big.ckpt", data_pkl, {"0": bytes(8)})
    else:
        data_pkl = pickle_of(dict_({"state_dict": dict_({"w": _legacy_tensor("0", 500_000_000)})}))
        path = write_legacy_torch(tmp_path / "big.pt", data_pkl, {"0": (500_000_000, bytes(8))})
    with pytest.raises(CheckpointError, match="declare.* 2000000000 bytes but the file holds"):
        load_checkpoint(path)


def _legacy_tensor(key: str, numel: int) -> bytes:
    """A legacy (pre-1.6) tensor: its persistent id also carries a view (None)."""
    pid = tuple_(text("storage"), global_("torch", "FloatStorage"), text(key), text("cpu"), integer(numel),
                 NONE) + BINPERSID
    return call("torch._utils", "_rebuild_tensor_v2", pid, integer(0), tuple_(integer(numel)), tuple_(integer(1)),
                NEWFALSE, call("collections", "OrderedDict"))


def test_sparse_tensor_with_indices_outside_its_size_is_refused(tmp_path):
    indices, values = torch.tensor([[0, 10 ** 9]]), torch.tensor([1.0, 2.0])
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 1]]), values, (4,))
    sparse._indices().copy_(indices)  # now outside its size, as a hostile file can say
    torch.save({"state_dict": {"w": sparse}}, tmp_path / "sparse.ckpt")
    with pytest.raises(CheckpointError, match="holds a sparse tensor; refusing") as err:
        load_checkpoint(tmp_path / "sparse.ckpt")
    _one_line(err)


def test_meta_tensor_is_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.empty(10 ** 12, device="meta")}}, tmp_path / "meta.ckpt")
    with pytest.raises(CheckpointError, match="meta tensor") as err:
        load_checkpoint(tmp_path / "meta.ckpt")
    _one_line(err)


@pytest.mark.parametrize("leaf", [[1, 2, 3], "text", 7, {"nested": torch.ones(1)}])
def test_a_state_dict_entry_that_is_not_a_tensor_is_refused(tmp_path, leaf):
    torch.save({"state_dict": {"w": torch.ones(1), "extra": leaf}}, tmp_path / "leaf.ckpt")
    with pytest.raises(CheckpointError, match=r"state dict entry extra is a \w+, not a tensor") as err:
        load_checkpoint(tmp_path / "leaf.ckpt")
    _one_line(err)


# ---------------------------------------------------------------------------------------------
# Further hostile files (the note of issue 19 lists them with their outcome before and after)
# ---------------------------------------------------------------------------------------------
def _zip(pkl: bytes, records=None, **options):
    return lambda folder: write_torch_zip(folder / "x.ckpt", pkl, records if records is not None else {"0": bytes(8)},
                                          **options)


def _stack_global(folder):  # protocol 4's STACK_GLOBAL hides the name from GLOBAL-only checks
    pkl = b"\x80\x04" + text("posix") + text("system") + b"\x93" + tuple_(text("true")) + b"R."
    return write_torch_zip(folder / "x.ckpt", pkl, {})


def _duplicate_member(folder):
    path = write_torch_zip(folder / "x.ckpt", _state_dict_pickle(), {"0": bytes(8)})
    with zipfile.ZipFile(path, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("archive/data.pkl", pickle_of(call("builtins", "bytearray", integer(2 ** 33))))
    return path


def _member_past_the_end(folder):
    path = write_torch_zip(folder / "x.ckpt", _state_dict_pickle(), {"0": bytes(8)})
    data = bytearray(path.read_bytes())
    name = b"archive/data/0"
    start = data.find(b"PK\x01\x02")  # the central directory entry of the storage record
    while data[start + 46:start + 46 + len(name)] != name:
        start = data.find(b"PK\x01\x02", start + 4)
    struct.pack_into("<II", data, start + 20, 2 ** 31, 2 ** 31)  # compressed and uncompressed sizes
    path.write_bytes(bytes(data))
    return path


def _encrypted_member(folder):
    path = write_torch_zip(folder / "x.ckpt", _state_dict_pickle(), {"0": bytes(8)})
    data = bytearray(path.read_bytes())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        while start >= 0:
            data[start + flag_offset] |= 0x1
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))
    return path


def _two_folders(folder):
    path = write_torch_zip(folder / "x.ckpt", _state_dict_pickle(), {"0": bytes(8)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("other/data.pkl", pickle_of(call("builtins", "bytearray", integer(2 ** 33))))
    return path


def _legacy_count_larger_than_declared(folder):
    pkl = pickle_of(dict_({"state_dict": dict_({"w": _legacy_tensor("0", 2)})}))
    return write_legacy_torch(folder / "x.pt", pkl, {"0": (10 ** 12, bytes(8))})


def _view_of_one_element_as_a_terabyte(folder):
    pkl = pickle_of(dict_({"state_dict": dict_({"w": tensor("0", (2 ** 40,), numel=1, stride=(0,))})}))
    return write_torch_zip(folder / "x.ckpt", pkl, {"0": bytes(4)})


def _backward_hook(folder):
    hooks = call("collections", "OrderedDict") + MARK + integer(0) + global_("torch._utils", "_rebuild_tensor") \
        + b"u"
    pkl = pickle_of(dict_({"state_dict": dict_({"w": call(
        "torch._utils", "_rebuild_tensor_v2", _storage_pid("0", 2), integer(0), tuple_(integer(2)),
        tuple_(integer(1)), NEWFALSE, hooks)})}))
    return write_torch_zip(folder / "x.ckpt", pkl, {"0": bytes(8)})


def _storage_pid(key: str, numel: int, storage_class: str = "FloatStorage") -> bytes:
    return tuple_(text("storage"), global_("torch", storage_class), text(key), text("cpu"), integer(numel)) + BINPERSID


def _offset_outside_storage(folder):
    pkl = pickle_of(dict_({"state_dict": dict_({"w": tensor("0", (2,), numel=2, offset=10 ** 9)})}))
    return write_torch_zip(folder / "x.ckpt", pkl, {"0": bytes(8)})


def _memo_hole(folder):
    return write_torch_zip(folder / "x.ckpt", pickle_of(dict_({"state_dict": get(99)})), {})


def _python2_builtin_alias(folder):  # __builtin__ is renamed to builtins as torch's unpickler does
    return write_torch_zip(folder / "x.ckpt", pickle_of(call("__builtin__", "eval", text("1+1"))), {})


def _module_persistent_id(folder):
    pid = tuple_(text("module"), global_("torch.nn", "Linear"), text("x.py"), text("source")) + BINPERSID
    return write_torch_zip(folder / "x.ckpt", pickle_of(dict_({"state_dict": pid})), {})


def _quantized(folder):
    torch.save({"state_dict": {"w": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}},
               folder / "x.ckpt")
    return folder / "x.ckpt"


def _nested(folder):
    torch.save({"state_dict": {"w": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])}}, folder / "x.ckpt")
    return folder / "x.ckpt"


def _complex_weights(folder):
    torch.save({"state_dict": {"w": torch.ones(2, dtype=torch.complex64)}}, folder / "x.ckpt")
    return folder / "x.ckpt"


def _deep_nesting(folder):  # 100000 nested lists: nothing recursive may walk them
    depth = 100_000
    nested = EMPTY_LIST + put(0) + (MARK + EMPTY_LIST) * depth + APPENDS * depth
    return write_torch_zip(folder / "x.ckpt", pickle_of(dict_({"state_dict": dict_({"w": nested})})), {})


def _truncated_pickle(folder):
    return write_torch_zip(folder / "x.ckpt", _state_dict_pickle()[:-20], {"0": bytes(8)})


def _no_data_pkl(folder):
    with zipfile.ZipFile(folder / "x.ckpt", "w") as archive:
        archive.writestr("archive/version", b"3\n")
    return folder / "x.ckpt"


def _missing_storage_record(folder):
    return write_torch_zip(folder / "x.ckpt", _state_dict_pickle(), {})


def _negative_numel(folder):
    pkl = pickle_of(dict_({"state_dict": dict_({"w": tensor("0", (2,), numel=-5)})}))
    return write_torch_zip(folder / "x.ckpt", pkl, {"0": bytes(8)})


def _tar_file(folder):
    import tarfile

    with tarfile.open(folder / "x.ckpt", "w") as archive:
        (folder / "storages").write_bytes(pickle_of(integer(1)))
        archive.add(folder / "storages", arcname="storages")
    return folder / "x.ckpt"


def _safetensors_header_past_the_end(folder):
    return write_safetensors(folder / "x.safetensors", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                             bytes(4), declared_length=2 ** 40)


def _safetensors_shape_overflow(folder):
    return write_safetensors(folder / "x.safetensors",
                             {"w": {"dtype": "F32", "shape": [2 ** 32, 2 ** 32, 4], "data_offsets": [0, 0]}})


def _safetensors_overlapping(folder):
    return write_safetensors(folder / "x.safetensors", {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12))


def _safetensors_duplicate_names(folder):
    header = (b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
              b'"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}')
    return write_safetensors(folder / "x.safetensors", header, bytes(4))


def _safetensors_complex(folder):
    return write_safetensors(folder / "x.safetensors", {"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
                             bytes(8))


def _safetensors_nested_metadata(folder):
    header = b'{"__metadata__":' + b'{"a":' * 5000 + b'"x"' + b"}" * 5000 + b"}"
    return write_safetensors(folder / "x.safetensors", header)


def _safetensors_infinity(folder):
    return write_safetensors(folder / "x.safetensors", {"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}},
                             struct.pack("<2e", 1.0, float("inf")))


HOSTILE_FILES = [
    ("pickle: STACK_GLOBAL opcode (protocol 4)", _stack_global, r"opcode b'\\x93'.* is not one torch reads"),
    ("pickle: __builtin__.eval (python 2 name)", _python2_builtin_alias, r"\(builtins\.eval\); refusing"),
    ("pickle: persistent id of a module", _module_persistent_id, r"persistent reference that is not a storage"),
    ("pickle: memo reference never stored", _memo_hole, r"malformed pickle \(KeyError\)"),
    ("pickle: truncated before STOP", _truncated_pickle, r"ends early|malformed"),
    ("pickle: 100000 nested lists", _deep_nesting, r"state dict entry w is a list, not a tensor"),
    ("pickle: negative element count", _negative_numel, r"declares -5 elements"),
    ("pickle: stride-0 view of 4 bytes as 2**40 floats", _view_of_one_element_as_a_terabyte,
     r"a view of shape \(1099511627776,\) over only 4 bytes"),
    ("pickle: storage offset outside the storage", _offset_outside_storage, r"out of bounds|corrupted"),
    ("pickle: tensor with a backward hook", _backward_hook, r"a tensor with backward hooks"),
    ("dtype: quantized tensor", _quantized, r"holds a quantized tensor"),
    ("dtype: nested tensor", _nested, r"holds a nested tensor"),
    ("dtype: complex weights", _complex_weights, r"holds complex weights"),
    ("zip: second data.pkl under the same name", _duplicate_member, r"two members of the same name"),
    ("zip: member sizes point past the end", _member_past_the_end, r"runs past the end|corrupted"),
    ("zip: encrypted members", _encrypted_member, r"encrypted"),
    ("zip: members in two folders", _two_folders, r"more than one top folder"),
    ("zip: no data.pkl", _no_data_pkl, r"no archive/data\.pkl"),
    ("zip: storage without its record", _missing_storage_record, r"storage '0' has no data"),
    ("legacy: storage count 10**12 in the data section", _legacy_count_larger_than_declared,
     r"corrupted, truncated or not a checkpoint"),
    ("tar: pre-1.6 tar layout", _tar_file, r"neither a torch zip, a legacy torch file nor a safetensors file"),
    ("safetensors: header length 2**40", _safetensors_header_past_the_end, r"header too large"),
    ("safetensors: shape whose size overflows", _safetensors_shape_overflow, r"overflow"),
    ("safetensors: overlapping tensors", _safetensors_overlapping, r"invalid offset"),
    ("safetensors: a name twice in the header", _safetensors_duplicate_names, r"corrupted"),
    ("safetensors: complex64 tensor", _safetensors_complex, r"w is a complex tensor \(complex64\)"),
    ("safetensors: metadata nested 5000 deep", _safetensors_nested_metadata, r"invalid JSON"),
    ("safetensors: an infinite float16 weight", _safetensors_infinity,
     r"NaN or infinite weights in 1 tensor\(s\) \(w\)"),
]


@pytest.mark.parametrize("build, message", [case[1:] for case in HOSTILE_FILES],
                         ids=[case[0] for case in HOSTILE_FILES])
def test_hostile_file_is_refused_in_one_line(tmp_path, monkeypatch, build, message):
    monkeypatch.chdir(tmp_path)
    path = build(tmp_path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    _one_line(err)


@pytest.mark.parametrize("build", [_stack_global, _duplicate_member, _view_of_one_element_as_a_terabyte,
                                   _safetensors_header_past_the_end, _tar_file])
def test_shape_reading_refuses_what_loading_refuses(tmp_path, build):
    with pytest.raises(CheckpointError):
        checkpoint_tensor_shapes(build(tmp_path))
