"""Values across the re-check's wall, by value: a check's inputs one way, a student's results back.

Why: in the re-check the checks run in the server, a process that never runs student code (issue
21, value-only checking); the student's functions run in the child. What crosses between them is
data, never objects: numbers, strings, tuples, lists, dicts and tensors, encoded as JSON. The
loader is this module (no pickle, no ``torch.load``): a tensor is its dtype (from a fixed list),
its shape and its raw bytes, checked against each other. Anything else a student's code returns
(a function, a module, a tensor subclass, a class of its own) stays in the child and crosses as a
*handle*: its number, its type's name and whether it can be called. The server's checks then see a
:class:`course_lib.checks.remote.StudentObject`, which is not a number or a tensor, so every type
test of the checks fails it with the usual message.

The child's own copies are what it sends: a student's object cannot run code in the server, and
nothing the server holds (an expected value, a case, a hidden test) is ever in the child unless the
server sent it as a call's input.
"""
from __future__ import annotations

import base64
import math
from typing import Any, Callable

from course_lib.checks import plain_scalar

MAX_DEPTH = 8                 # nesting of tuples, lists and dicts
MAX_ITEMS = 10_000            # items of one tuple, list or dict
MAX_TEXT = 10_000             # characters of one string
MAX_TENSOR_BYTES = 16 << 20   # bytes of one tensor's data; a larger one is refused on arrival
MAX_TOTAL = 100_000           # items (numbers, strings, containers) of one decoded value
# The dtypes a value may have, by name (torch.float32 -> "float32").
DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128", "uint8", "int8",
          "int16", "int32", "int64", "bool")


class BadValue(ValueError):
    """A message that does not decode: the other side broke the protocol."""


def _dtype(name: str):
    import torch

    if name not in DTYPES:
        raise BadValue(f"dtype {name!r} is not one a value may have")
    return getattr(torch, name)


def encode(value: Any, keep: Callable[[Any], int], depth: int = 0) -> Any:
    """``value`` as JSON data; objects that are not data are handed to ``keep`` (which returns
    their handle number) and cross as handles."""
    import torch

    value = plain_scalar(value)  # NumPy and subclassed numbers: plain ones
    kind = type(value)
    if value is None or kind in (bool, int):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"t": "float", "v": repr(value)}
    if kind is str:
        return {"t": "str", "v": value[:MAX_TEXT]} if len(value) > MAX_TEXT else value
    if depth < MAX_DEPTH and kind in (tuple, list, torch.Size) and len(value) <= MAX_ITEMS:
        return {"t": {tuple: "tuple", list: "list", torch.Size: "size"}[kind],
                "v": [encode(item, keep, depth + 1) for item in value]}
    if depth < MAX_DEPTH and kind is dict and len(value) <= MAX_ITEMS:
        return {"t": "dict", "v": [[encode(k, keep, depth + 1), encode(v, keep, depth + 1)]
                                   for k, v in value.items()]}
    if kind in (torch.Tensor, torch.nn.Parameter) and str(value.dtype)[6:] in DTYPES \
            and value.layout == torch.strided:
        return _encode_tensor(value)
    if kind is torch.dtype and str(value)[6:] in DTYPES:
        return {"t": "dtype", "v": str(value)[6:]}
    if kind is torch.device:
        return {"t": "device", "v": str(value)}
    return {"t": "handle", "v": keep(value), "type": kind.__name__[:80],
            "callable": callable(value), "name": _name(value)}


def _name(value: Any) -> str | None:
    name = getattr(value, "__name__", None) if callable(value) else None
    return name[:80] if type(name) is str else None


def _encode_tensor(tensor) -> dict:
    data = tensor.detach()
    message = {"t": "tensor", "dtype": str(data.dtype)[6:], "shape": list(data.shape),
               "device": str(data.device), "param": type(tensor).__name__ == "Parameter",
               "grad": bool(tensor.requires_grad)}
    if data.device.type == "meta" or data.numel() * data.element_size() > MAX_TENSOR_BYTES:
        message["data"] = None  # the shape alone: a meta tensor, or one too large to check
        return message
    import torch

    raw = data.to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    message["data"] = base64.b64encode(raw).decode("ascii")
    return message


def decode(data: Any, resolve: Callable[[dict], Any]) -> Any:
    """The value ``encode`` wrote; a handle becomes ``resolve(message)``. Raises
    :class:`BadValue` for anything this module would not have written (and for anything that
    fails while building it: the message comes from the student's process), and for more than
    :data:`MAX_TOTAL` items in all (a message's size bounds the reader's memory, not what its
    numbers become once decoded)."""
    try:
        return _decode(data, resolve, 0, [MAX_TOTAL])
    except BadValue:
        raise
    except Exception as exc:  # noqa: BLE001 (an overflow, a shape PyTorch refuses, ...)
        raise BadValue(f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _decode(data: Any, resolve: Callable[[dict], Any], depth: int, left: list[int]) -> Any:
    left[0] -= 1
    if left[0] < 0:
        raise BadValue(f"more than {MAX_TOTAL} items in one value")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is not dict or depth > MAX_DEPTH + 1:
        raise BadValue("not a value")
    tag, inner = data.get("t"), data.get("v")
    if tag == "float":
        if inner not in ("inf", "-inf", "nan"):
            raise BadValue("not a float")
        return float(inner)
    if tag == "str" and type(inner) is str:
        return inner[:MAX_TEXT]
    if tag in ("tuple", "list", "size", "dict"):
        if type(inner) is not list or len(inner) > MAX_ITEMS:
            raise BadValue("not a sequence")
        if tag == "dict":
            if not all(type(pair) is list and len(pair) == 2 for pair in inner):
                raise BadValue("not a dict")
            return {_key(_decode(k, resolve, depth + 1, left)): _decode(v, resolve, depth + 1, left)
                    for k, v in inner}
        items = [_decode(item, resolve, depth + 1, left) for item in inner]
        if tag == "size":
            import torch

            return torch.Size(_int(i) for i in items)
        return tuple(items) if tag == "tuple" else items
    if tag == "tensor":
        return _decode_tensor(data)
    if tag == "dtype" and type(inner) is str:
        return _dtype(inner)
    if tag == "device" and type(inner) is str:
        import torch

        if inner.split(":")[0] not in ("cpu", "cuda", "meta"):
            raise BadValue(f"not a device here: {inner[:40]!r}")
        return torch.device(inner)
    if tag == "handle" and type(inner) is int:
        return resolve(data)
    raise BadValue(f"unknown value tag {tag!r}")


def _key(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        raise BadValue("a dict key must be hashable")
    return value


def _int(value: Any) -> int:
    if type(value) is not int or not 0 <= value < 1 << 63:
        raise BadValue("a size is whole numbers of at most 63 bits")
    return value


def _decode_tensor(data: dict):
    import torch

    dtype = _dtype(data.get("dtype"))
    shape = data.get("shape")
    if type(shape) is not list or len(shape) > 16:
        raise BadValue("a tensor's shape is a list of whole numbers")
    shape = [_int(size) for size in shape]
    device = data.get("device")
    if type(device) is not str:
        raise BadValue("a tensor's device is a string")
    raw = data.get("data")
    if raw is None:
        if device != "meta":  # too large to send: no placeholder the checks could compute with
            raise BadValue(f"a tensor of shape {tuple(shape)} is too large to send "
                           f"({MAX_TENSOR_BYTES >> 20} MiB at most)")
        tensor = torch.empty(shape, dtype=dtype, device="meta")
    else:
        if type(raw) is not str:
            raise BadValue("a tensor's data is base64 text")
        try:
            buffer = bytearray(base64.b64decode(raw, validate=True))
        except ValueError:
            raise BadValue("a tensor's data is not base64") from None
        element = torch.empty((), dtype=dtype).element_size()
        if len(buffer) != math.prod(shape) * element:
            raise BadValue("a tensor's data does not match its shape and dtype")
        tensor = (torch.frombuffer(buffer, dtype=dtype) if buffer
                  else torch.empty(0, dtype=dtype)).reshape(shape)
        tensor = _to_device(tensor, device)
    if data.get("grad") is True and tensor.is_floating_point():
        tensor.requires_grad_(True)
    return torch.nn.Parameter(tensor, requires_grad=tensor.requires_grad) \
        if data.get("param") is True else tensor


def _to_device(tensor, device: str):
    """On the device it came from: the CPU, or CUDA where this process has it (both sides run on
    the same machine); any other name is a broken message, refused before PyTorch reads it (a
    device name can make PyTorch import a backend module)."""
    import torch

    kind = device.split(":")[0]
    if kind == "cpu":
        return tensor
    if kind == "cuda" and torch.cuda.is_available():
        return tensor.to(torch.device(device))
    raise BadValue(f"not a device here: {device[:40]!r}")
