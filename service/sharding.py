"""Which shard owns a series: Prometheus's ``hashmod`` over the same labels, so both sides agree.

Prometheus splits remote-write traffic between shards with ``write_relabel_configs``::

    - source_labels: [instance, job]              # the shard's `labels`
      modulus: 2                                  # the shard `count`
      target_label: __tmp_shard
      action: hashmod
    - source_labels: [__tmp_shard]
      regex: 0                                    # this queue's shard `index`
      action: keep
    - regex: __tmp_shard                          # else it is sent and becomes part of
      action: labeldrop                           # the series' identity

``hashmod`` joins the source label values with ``;`` (a missing label is the
empty string), takes the MD5 digest of that text and reduces its last eight
bytes, read big-endian, modulo the modulus.  :func:`shard_of` computes the
same, so a series that Prometheus sends to shard *i* is the one shard *i*
scores, and a pull detector keeps the same share of a query's result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

#: Prometheus's default relabel separator.
SEPARATOR = ";"


def hashmod(labels: Mapping[str, str], source_labels: Sequence[str], modulus: int) -> int:
    """Prometheus's ``hashmod`` relabel action on ``labels``.

    >>> hashmod({"__name__": "up", "job": "api"}, ["__name__", "job"], 2)
    0
    >>> missing = hashmod({"job": "api"}, ["__name__", "job"], 7)
    >>> missing == hashmod({"__name__": "", "job": "api"}, ["__name__", "job"], 7)
    True
    """
    if modulus < 1:
        raise ValueError(f"modulus must be at least 1, got {modulus}")
    text = SEPARATOR.join(labels.get(name, "") for name in source_labels)
    digest = hashlib.md5(text.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus
