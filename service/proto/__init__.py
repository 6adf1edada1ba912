"""Prometheus remote-write protobuf messages, built from descriptors when imported.

``remote_v1.proto`` and ``remote_v2.proto`` beside this module are the
readable copies of the schema; this module declares the same messages as data
and turns them into classes with the protobuf runtime
(``tests/service/test_remote_write.py`` checks that both say the same).

Why descriptors at import time rather than ``protoc`` output (``*_pb2.py``):

- No code generator in the build and no generated code pinned to one protobuf
  release: ``_pb2`` files check the runtime's major version when imported and
  warn or fail across majors; descriptors are plain data every release reads.
- The decoder in :mod:`service.remote_write` reads the same bytes through
  several wire-compatible *views* (labels kept as raw bytes, samples of all
  series merged into columns …).  Here a view is six lines of data.
- Everything lives in a private :data:`POOL`, so another library that registers
  ``prometheus.WriteRequest`` in protobuf's default pool cannot clash with us.

Examples
--------
>>> request = WriteRequest(timeseries=[TimeSeries(
...     labels=[Label(name="__name__", value="up"), Label(name="job", value="node")],
...     samples=[Sample(value=1.0, timestamp=1_700_000_000_000)])])
>>> WriteRequest.FromString(request.SerializeToString()).timeseries[0].labels[1].value
'node'
>>> v2 = RequestV2(symbols=["", "__name__", "up"], timeseries=[TimeSeriesV2(labels_refs=[1, 2])])
>>> list(RequestV2.FromString(v2.SerializeToString()).timeseries[0].labels_refs)
[1, 2]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

_FieldProto = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _FieldProto.TYPE_DOUBLE,
    "int64": _FieldProto.TYPE_INT64,
    "uint32": _FieldProto.TYPE_UINT32,
    "string": _FieldProto.TYPE_STRING,
    "bytes": _FieldProto.TYPE_BYTES,
}

#: Every message of this package and of :mod:`service.remote_write`'s views.
POOL = descriptor_pool.DescriptorPool()


class Field(NamedTuple):
    """One field of a message: name, number, type and whether it repeats.

    ``type`` is a scalar (``double``, ``int64``, ``uint32``, ``string``,
    ``bytes``) or the name of another message of the same file.

    Examples
    --------
    >>> Field("labels", 1, "Label", repeated=True)
    Field(name='labels', number=1, type='Label', repeated=True)
    """

    name: str
    number: int
    type: str
    repeated: bool = False


def build_messages(
    file_name: str, package: str, messages: Mapping[str, Sequence[Field]]
) -> dict[str, type[Message]]:
    """Declare a proto3 file in :data:`POOL` and return its message classes by name.

    Parameters
    ----------
    file_name
        Unique within :data:`POOL`, e.g. ``"prometheus/remote_v1.proto"``.
    package
        The protobuf package, e.g. ``"prometheus"``.
    messages
        Message name to its fields.

    Examples
    --------
    >>> pair = [Field("a", 1, "int64"), Field("b", 2, "string")]
    >>> classes = build_messages("doc/pair.proto", "doc", {"Pair": pair})
    >>> classes["Pair"](a=3, b="x").SerializeToString()
    b'\\x08\\x03\\x12\\x01x'
    """
    file = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3")
    for message_name, fields in messages.items():
        message = file.message_type.add(name=message_name)
        for field in fields:
            proto = message.field.add(
                name=field.name,
                number=field.number,
                label=_FieldProto.LABEL_REPEATED if field.repeated else _FieldProto.LABEL_OPTIONAL,
            )
            if field.type in _SCALARS:
                proto.type = _SCALARS[field.type]
            elif field.type in messages:
                proto.type = _FieldProto.TYPE_MESSAGE
                proto.type_name = f".{package}.{field.type}"
            else:
                raise ValueError(f"{message_name}.{field.name}: unknown type {field.type!r}")
    POOL.Add(file)
    return {
        name: message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{package}.{name}"))
        for name in messages
    }


#: Remote write 1.0 (``remote_v1.proto``).
V1_SCHEMA: dict[str, list[Field]] = {
    "WriteRequest": [Field("timeseries", 1, "TimeSeries", repeated=True)],
    "TimeSeries": [Field("labels", 1, "Label", repeated=True), Field("samples", 2, "Sample", repeated=True)],
    "Label": [Field("name", 1, "string"), Field("value", 2, "string")],
    "Sample": [Field("value", 1, "double"), Field("timestamp", 2, "int64")],
}
#: Remote write 2.0 (``remote_v2.proto``).
V2_SCHEMA: dict[str, list[Field]] = {
    "Request": [
        Field("symbols", 4, "string", repeated=True),
        Field("timeseries", 5, "TimeSeries", repeated=True),
    ],
    "TimeSeries": [
        Field("labels_refs", 1, "uint32", repeated=True),
        Field("samples", 2, "Sample", repeated=True),
    ],
    "Sample": [Field("value", 1, "double"), Field("timestamp", 2, "int64")],
}

_v1 = build_messages("prometheus/remote_v1.proto", "prometheus", V1_SCHEMA)
_v2 = build_messages("io/prometheus/write/v2/remote_v2.proto", "io.prometheus.write.v2", V2_SCHEMA)

WriteRequest = _v1["WriteRequest"]
TimeSeries = _v1["TimeSeries"]
Label = _v1["Label"]
Sample = _v1["Sample"]
RequestV2 = _v2["Request"]
TimeSeriesV2 = _v2["TimeSeries"]
SampleV2 = _v2["Sample"]

__all__ = [
    "POOL",
    "V1_SCHEMA",
    "V2_SCHEMA",
    "Field",
    "Label",
    "RequestV2",
    "Sample",
    "SampleV2",
    "TimeSeries",
    "TimeSeriesV2",
    "WriteRequest",
    "build_messages",
]
