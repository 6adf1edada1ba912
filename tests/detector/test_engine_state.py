"""The engine's checkpoint keeps series keys as they are, at the size they are."""

from __future__ import annotations

import numpy as np

from detector.config import build_engine, parse_config


def test_one_long_key_does_not_widen_every_key() -> None:
    # A remote-write client may send one series with a long label value: the checkpoint must
    # not give every other series that width (a numpy string array did: here 1,001 × 40 KB).
    engine = build_engine(parse_config({}))
    keys = [f'up{{instance="{i}"}}' for i in range(1000)] + ['up{long="' + "x" * 10_000 + '"}']
    engine.register(keys)
    state = engine.state_dict()
    assert state["engine.keys"].nbytes + state["engine.key_ends"].nbytes < 50_000


def test_keys_round_trip_exactly() -> None:
    keys = ['a{v="x\\u0000"}', "é{}", 'b{v="\x00"}', "plain\x00", "🙂{}"]
    engine = build_engine(parse_config({}))
    engine.register(keys)
    copy = build_engine(parse_config({}))
    copy.load_state_dict(engine.state_dict())
    assert copy.series.keys == keys


def test_checkpoints_with_keys_as_a_string_array_still_load() -> None:
    engine = build_engine(parse_config({}))
    engine.register(["a{}", "b{}"])
    state = engine.state_dict()
    del state["engine.key_ends"]
    state["engine.keys"] = np.array(["a{}", "b{}"])
    copy = build_engine(parse_config({}))
    copy.load_state_dict(state)
    assert copy.series.keys == ["a{}", "b{}"]
