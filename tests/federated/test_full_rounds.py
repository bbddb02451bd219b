"""``--full-rounds N`` (issue 21, item 3): UDEC / ULATDEC start with N FULL rounds, so the
clients' private parts begin from a model averaged over every client's data.

Oracles: the FULL method's own downlink and assignments for rounds 1..N and UDEC's afterwards;
the server checkpoint re-read by the resume code (the whole model before a FULL round).
"""

import numpy as np
import pytest

pytest.importorskip("flwr")

from decentdiff import config as C
from decentdiff.errors import ConfigError
from decentdiff.federated import aggregate as A
from decentdiff.federated import parts as P
from decentdiff.federated.settings import FedSettings, build_settings, fed_base
from decentdiff.federated.store import initial_arrays, resume_point, save_server_model


def test_full_rounds_exchange_what_full_does_then_the_methods_parts():
    udec, full = P.METHODS["udec"], P.METHODS["full"]
    ids = [3, 7, 9]
    for r in (1, 2, 3):
        assert P.downlink_groups(udec, r, full_rounds=3) == P.downlink_groups(full, r)
        assert P.assignments(udec, ids, r, 0, full_rounds=3) == P.assignments(full, ids, r, 0)
    # Round 4 receives round 3's averaged model whole (else that average would be lost), and
    # from then on only the decoder travels, reported by everyone.
    assert P.downlink_groups(udec, 4, full_rounds=3) == P.ALL_GROUPS
    assert P.assignments(udec, ids, 4, 0, full_rounds=3) == {i: udec.shared for i in ids}
    assert P.downlink_groups(udec, 5, full_rounds=3) == udec.shared
    assert P.downlink_groups(udec, 2) == udec.shared  # the paper's UDEC: only round 1 is whole


def test_predicted_bytes_are_full_then_udec_round_by_round():
    layout = {"down.0.w": ((4, 4), np.dtype("float32")), "up.0.w": ((8,), np.dtype("float32"))}
    mixed = A.predict_bytes(layout, "udec", 3, 5, full_rounds=2)["per_round"]
    full = A.predict_bytes(layout, "full", 3, 5)["per_round"]
    udec = A.predict_bytes(layout, "udec", 3, 5)["per_round"]
    assert mixed[:2] == full[:2] and mixed[3:] == udec[3:]
    assert mixed[2]["down"] == full[2]["down"] and mixed[2]["up"] == udec[2]["up"]
    assert mixed[0]["up"] == 3 * (16 + 8) * 4 and mixed[2]["up"] == 3 * 8 * 4  # by hand


def _settings(method="udec", **kw):
    cfg = C.resolve(base=fed_base())
    cfg.model.preset = "tiny"
    options = FedSettings(method=method, clients=2, rounds=4, local_steps=1, **kw).validate()
    return build_settings(cfg, options, image_shape=(1, 8, 8), num_classes=0)


def test_the_server_keeps_the_whole_model_while_a_full_round_follows(tmp_path):
    s = _settings(full_rounds=2)
    s.run_dir = str(tmp_path)
    init = initial_arrays(s)
    trained = {k: v + 1.0 if v.dtype.kind == "f" else v for k, v in init.items()}
    enc = P.keys_for({"encoder"}, list(init))[0]
    for rnd in (1, 2):  # rounds 2 and 3 receive the whole model: the server keeps all of it
        save_server_model(tmp_path, s, trained, rnd)
        got, done = resume_point(tmp_path, s)
        assert done == rnd and np.array_equal(got[enc], trained[enc])
    save_server_model(tmp_path, s, trained, 3)  # round 4 is UDEC's: only the decoder is sent
    got, done = resume_point(tmp_path, s)
    assert done == 3 and np.array_equal(got[enc], init[enc])  # not stored, never sent again


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"method": "full", "full_rounds": 1}, "--full-rounds is for udec and ulatdec"),
        ({"full_rounds": 5}, "--full-rounds must be in 0..--rounds (4), got 5"),
        ({"full_rounds": -1}, "--full-rounds must be in 0..--rounds (4), got -1"),
        ({"full_rounds": 1, "server_opt": "fedadam"}, "not supported yet"),
    ],
)
def test_bad_full_rounds_fail_in_one_line(kw, needle):
    with pytest.raises(ConfigError, match=None) as e:
        FedSettings(**{"method": "udec", "rounds": 4, **kw}).validate()
    assert needle in str(e.value) and "\n" not in str(e.value)
