"""Which parameters travel: FULL covers everything once; USPLIT's pairings; UDEC/ULATDEC groups."""

from collections import Counter

import pytest

from decentdiff.errors import ConfigError
from decentdiff.federated import parts as P
from decentdiff.models.registry import build_network, network_config
from decentdiff.models.unet import PARTS


@pytest.fixture(
    scope="module", params=[("tiny", 0), ("small", 10), ("dit-tiny", 0), ("dit-small", 10)]
)
def keys(request):
    preset, classes = request.param
    return list(build_network(network_config(preset, 1, classes)).state_dict())


def test_groups_cover_every_parameter_exactly_once(keys):
    per_group = P.split_by_group(keys)
    flat = [k for ks in per_group.values() for k in ks]
    assert sorted(flat) == sorted(keys)
    assert len(flat) == len(set(flat))
    assert P.keys_for(P.METHODS["full"].shared, keys) == keys
    # The stem conv is the encoder's, the final block the decoder's.
    assert all(P.group_of(k) == "encoder" for k in keys if k.startswith("down.0."))
    assert all(P.group_of(k) == "decoder" for k in keys if k.startswith("out."))
    assert {k.split(".")[0] for k in keys} <= set(PARTS)


def test_partial_methods_send_the_paper_parts(keys):
    dec = P.keys_for(P.METHODS["udec"].shared, keys)
    lat = P.keys_for(P.METHODS["ulatdec"].shared, keys)
    assert dec and all(k.split(".")[0] in ("up", "out") for k in dec)
    assert set(dec) < set(lat)
    assert {k.split(".")[0] for k in set(lat) - set(dec)} == {"mid"}
    for m in ("udec", "ulatdec"):
        assert P.downlink_groups(m, 1) == P.ALL_GROUPS  # the initial broadcast
        assert P.downlink_groups(m, 2) == P.METHODS[m].shared
    for m in ("full", "usplit"):
        assert P.downlink_groups(m, 7) == P.ALL_GROUPS


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9])
def test_usplit_pairing_properties(n):
    ids = [10 * i + 3 for i in range(n)]
    extra = Counter()
    for rnd in range(1, 201):
        a = P.assignments("usplit", ids, rnd, seed=1)
        assert set(a) == set(ids)
        union = Counter(g for groups in a.values() for g in groups)
        pairs = n // 2
        # Each pair reports the whole model once: encoder and decoder once each, bottleneck once.
        assert union["encoder"] >= pairs and union["decoder"] >= pairs
        assert union["bottleneck"] == pairs + n % 2
        assert all(not ({"encoder", "decoder"} <= g) for g in a.values())
        if n % 2:
            odd = [c for c, g in a.items() if "bottleneck" in g and len(g) == 2]
            assert len(odd) >= 1
            extra[union["encoder"] - pairs] += 1
        else:
            assert union["encoder"] == union["decoder"] == pairs
        assert a == P.assignments("usplit", list(reversed(ids)), rnd, seed=1)  # order-free
    if n % 2:
        # The odd client's extra part is the encoder or the decoder, at random (≈ half each).
        assert 60 < extra[1] < 140 and extra[0] + extra[1] == 200


def test_usplit_varies_with_round_and_seed_and_is_balanced():
    ids = list(range(6))
    rounds = [P.assignments("usplit", ids, r, 0) for r in range(1, 101)]
    assert len({tuple(sorted((c, tuple(sorted(g))) for c, g in a.items())) for a in rounds}) > 50
    enc = Counter(c for a in rounds for c, g in a.items() if "encoder" in g)
    mid = Counter(c for a in rounds for c, g in a.items() if "bottleneck" in g)
    assert all(30 < enc[c] < 70 for c in ids), enc  # each client reports the encoder ~half the time
    assert all(30 < mid[c] < 70 for c in ids), mid  # and gets the coin-flipped bottleneck ~half
    by_seed = {
        s: tuple(
            sorted((c, tuple(sorted(g))) for c, g in P.assignments("usplit", ids, 5, s).items())
        )
        for s in range(10)
    }
    assert len(set(by_seed.values())) > 1


def test_non_split_methods_ask_everyone_for_the_same():
    for m in ("full", "udec", "ulatdec"):
        a = P.assignments(m, [5, 2, 9], 3, 0)
        assert set(a.values()) == {P.METHODS[m].shared}


def test_unknown_method_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="choose one of: full, usplit, udec, ulatdec"):
        P.get_method("fedsplit")
    with pytest.raises(ValueError):
        P.group_of("encoder_extra.weight")
