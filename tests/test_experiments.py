"""The reproduction study's plumbing: verdict rules and the generated document (not the results)."""

import json
import re
import sys
from pathlib import Path

import pytest

EXP = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXP))

import common  # noqa: E402
import report  # noqa: E402
import run_all  # noqa: E402
import s1_ddm_vs_monolith as s1  # noqa: E402
import studies  # noqa: E402

REPO = EXP.parent


# --- the list of studies: experiments/studies.py is the only one ---------------------------------


def test_the_registry_lists_every_study_script_and_only_those():
    scripts = {p.stem for p in EXP.glob("s*.py") if re.fullmatch(r"s\d+_\w+", p.stem)}
    assert scripts == set(studies.BY_MODULE), "experiments/studies.py and the s<N>_*.py scripts"
    results = {p.stem for p in (REPO / "docs" / "reproduction").glob("*.json")}
    assert results <= set(studies.BY_MODULE), results - set(studies.BY_MODULE)
    numbers = sorted(s.number for s in studies.STUDIES)
    assert numbers == list(range(1, len(numbers) + 1))  # ids: unique, none skipped
    areas = [a for a, _, _ in studies.AREAS]
    assert [s.area for s in studies.STUDIES] == sorted(
        (s.area for s in studies.STUDIES), key=areas.index
    ), "STUDIES is grouped by area, in AREAS' order"
    for s in studies.STUDIES:
        assert s.module.startswith(f"s{s.number}_"), s
        assert s.question.endswith("?") and "? " not in s.question, s.question  # one question
        assert s.justifies.strip() and s.title.strip(), s
        assert s.module in report.BODIES, f"report.py has no body_s{s.number}"


def test_every_study_has_a_reading_file_and_every_reading_a_study():
    files = {p.stem for p in studies.READINGS.glob("*.md")}
    assert files == set(studies.BY_MODULE), files ^ set(studies.BY_MODULE)
    for s in studies.STUDIES:
        assert report.reading(s), f"{s.reading} is empty"


def test_what_a_study_justifies_points_to_code_that_exists():
    """`path.py NAME` in a study's 'justifies' line: the file under src/decentdiff/ exists and
    defines or mentions NAME (a default that moves must move its pointer too)."""
    src = REPO / "src" / "decentdiff"
    seen = 0
    for s in studies.STUDIES:
        for path, names in re.findall(r"`([\w/]+\.(?:py|md))([^`]*)`", s.justifies):
            f = REPO / path if path.startswith("docs/") else src / path
            assert f.is_file(), f"study {s.number}: no {f.relative_to(REPO)}"
            for name in re.findall(r"[A-Za-z_]\w*", names):
                assert name in f.read_text(), f"study {s.number}: no {name} in {path}"
            seen += 1
    assert seen >= 10


def test_run_all_runs_every_registered_study_by_number():
    assert run_all.chosen([]) == [s.module for s in studies.by_number()]
    assert run_all.chosen(["s2_", "s19"]) == ["s2_routing_table", "s19_content_clusters"]


def test_docs_reproduction_md_is_what_report_writes(tmp_path, monkeypatch):
    """docs/reproduction.md is current: regenerating it from the committed results and readings
    gives the committed file (the figures go to a temporary folder)."""
    monkeypatch.setattr(report, "RESULTS", REPO / "docs" / "reproduction")
    monkeypatch.setattr(report, "DOC", tmp_path / "reproduction.md")
    monkeypatch.setattr(report, "FIGS", tmp_path / "figures")
    assert report.main() == 0
    committed = (REPO / "docs" / "reproduction.md").read_text()
    assert (tmp_path / "reproduction.md").read_text() == committed, (
        "docs/reproduction.md is stale: run `python experiments/report.py`"
    )


def test_the_doc_groups_sections_by_area_and_keeps_each_studys_anchor():
    doc = (REPO / "docs" / "reproduction.md").read_text()
    heads = re.findall(r"^(#{2,3}) (.*)$", doc, re.M)
    areas = [h for lv, h in heads if lv == "##" and h != "Summary"]
    assert areas == [h for _, h, _ in studies.AREAS]
    sections = [h for lv, h in heads if lv == "###"]
    done = [s for s in studies.STUDIES if (report.RESULTS / f"{s.module}.json").is_file()]
    assert sections == [s.heading for s in done]
    for s in done:  # the summary row links to the section
        assert f"[{s.number}](#{report._anchor(s.heading)})" in doc
    for s in set(studies.STUDIES) - set(done):  # a study not run yet has a row, and says so
        assert re.search(rf"^\| {s.number} \| .* \| not run yet \|", doc, re.M)


def test_s1_verdict_rule():
    assert s1.verdict_of([0.8, 0.9, 0.99]) == "held"
    assert s1.verdict_of([1.2, 1.01, 1.5]) == "not held"
    assert s1.verdict_of([0.8, 1.2, 0.9]) == "mixed"


def test_summarise_matches_numpy():
    np = pytest.importorskip("numpy")
    xs = [3.0, 1.5, 2.25, 7.0]
    s = common.summarise(xs)
    assert s["mean"] == pytest.approx(np.mean(xs))
    assert s["std"] == pytest.approx(np.std(xs, ddof=1))
    assert (s["min"], s["max"], s["count"]) == (1.5, 7.0, 4)
    assert common.summarise([2.0])["std"] == 0.0


def test_find_row_takes_the_last_match(tmp_path):
    rows = [
        {"kind": "eval", "model": "monolith", "n": 10, "fid": 1.0},
        {"kind": "eval", "model": "ensemble", "routing": "top1", "n": 10, "fid": 2.0},
        {"kind": "eval", "model": "monolith", "n": 10, "fid": 3.0},
        {"kind": "fed_eval", "model": "monolith", "n": 10, "fid": 4.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert common.find_row(tmp_path, model="monolith", n=10)["fid"] == 3.0
    assert common.find_row(tmp_path, model="ensemble", routing="top1")["fid"] == 2.0
    assert common.find_row(tmp_path, model="ensemble", routing="full") is None
    assert common.find_row(tmp_path, kind="fed_eval", n=10)["fid"] == 4.0


def _fid(row_fid):
    return {"fid": row_fid, "train_flops": 100.0, "sample_gflops_per_image": 1.0}


def test_report_renders_every_verdict(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(report, "DOC", tmp_path / "reproduction.md")
    monkeypatch.setattr(report, "FIGS", tmp_path / "figures")
    (tmp_path / "results").mkdir()
    per_seed = {
        str(s): {"monolith": _fid(2.0), "K4_top1": _fid(1.5), "K8_top1": _fid(2.5)} for s in (0, 1)
    }
    s1_result = {
        "claim": "c1",
        "setup": {"n": 50, "seeds": [0, 1]},
        "per_seed": per_seed,
        "monolith": {"fid": common.summarise([2.0, 2.0])},
        "K4": {
            "fid": common.summarise([1.5, 1.5]),
            "ratio_to_monolith": common.summarise([0.75, 0.75]),
            "ratios": [0.75, 0.75],
            "train_flops_vs_monolith": 1.0,
        },
        "K8": {
            "fid": common.summarise([2.5, 2.5]),
            "ratio_to_monolith": common.summarise([1.25, 1.25]),
            "ratios": [1.25, 1.25],
            "train_flops_vs_monolith": 1.0,
        },
        "verdicts": {"K4": "held", "K8": "not held"},
        "verdict": "mixed",
        "wall_s": 60.0,
        "recorded": "now",
        "scale": 1.0,
        "commands": ["decentdiff partition x"],
    }
    (tmp_path / "results" / "s1_ddm_vs_monolith.json").write_text(json.dumps(s1_result))
    assert report.main() == 0
    doc = (tmp_path / "reproduction.md").read_text()
    assert "**mixed**" in doc and "| 0 | 2.00 | 1.50 | 2.50 | 0.750 | 1.250 |" in doc
    assert "not run yet" in doc  # the other seven studies
    assert "decentdiff partition x" in doc
    assert (tmp_path / "figures" / "repro_s1.png").stat().st_size > 1000


def test_report_without_results_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "RESULTS", tmp_path / "none")
    assert report.main() == 2
    assert "run_all.py" in capsys.readouterr().err


def test_overall_verdict_rule():
    assert common.overall({"a": "held", "b": "held"}) == "held"
    assert common.overall({"a": "held", "b": "not held"}) == "mixed"
    assert common.overall({"a": "not held", "b": common.INCONCLUSIVE}) == "not held"
    assert common.overall({"a": common.INCONCLUSIVE}) == common.INCONCLUSIVE


def test_s8_table_has_one_block_per_budget():
    def arms(ddm, fed):
        return {
            "DDM K=4 top-1 (fm)": {
                "fid": ddm,
                "train_bytes": 0,
                "one_time_bytes": 2e6,
                "wall_s": 9,
            },
            "FedAvg FULL iid (fm)": {"fid": fed, "train_bytes": 5e6, "rounds": 10, "wall_s": 7},
        }

    r = {
        "budgets": {"19k images": arms(12.5, 260.0), "64k images": arms(7.25, 30.5)},
        "checks": {"at_19k": "held", "at_64k": "held"},
    }
    text = "\n".join(report.body_s8(r))
    assert text.index("**19k images**") < text.index("12.50") < text.index("**64k images**")
    assert text.index("**64k images**") < text.index("7.25") and "30.50" in text
    assert text.count("over 10 rounds") == 2 and "at_64k: held" in text


def test_s11_ratio_is_best_ode_over_best_ancestral(tmp_path, monkeypatch):
    """Study 11's numbers from eval rows alone: per seed, min(Euler FIDs) / min(ancestral FIDs),
    the verdict on the default ε arm, and the table body."""
    import s11_eps_sampling as s11

    monkeypatch.setattr(common, "ROOT", tmp_path)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(s11, "ROOT", tmp_path)
    monkeypatch.setattr(s11, "SEEDS", (0, 1))
    monkeypatch.setattr(s11, "ARMS", {"eps-uniform": [], "fm": []})
    fids = {
        "eps-uniform": {"euler20": 90.0, "euler50": 60.0, "ddim20": 40.0, "ddpm20": 20.0,
                        "ddpm50": 30.0},
        "fm": {"euler20": 6.0, "euler50": 5.5, "ddim20": 6.0, "ddpm20": 5.0, "ddpm50": 5.0},
    }  # fmt: skip
    for arm, table in fids.items():
        for seed in (0, 1):
            run = s11.run_dir(arm, seed)
            run.mkdir(parents=True)
            (run / "evaluated").write_text("")
            rows = [
                {"kind": "eval", "model": "monolith", "n": s11.BASE["n"], "seed": seed,
                 "steps": int(k[-2:]), "solver": k[:-2], "fid": v * (1 + seed)}
                for k, v in table.items()
            ]  # fmt: skip
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = s11.report()
    assert r["ratios"]["eps-uniform"] == pytest.approx([3.0, 3.0])  # 60 / 20
    assert r["ratios"]["fm"] == pytest.approx([1.1, 1.1])  # 5.5 / 5.0
    assert r["verdict"] == "not held"
    text = "\n".join(report.body_s11(r))
    assert "| eps-uniform |" in text and "3.00 [3.00, 3.00]" in text


def test_s16_arms_plans_and_command_lines():
    import s16_fed_recipe as s16

    assert s16.split_of("fedavg fair dirichlet:0.1") == "dirichlet:0.1"
    assert s16.split_of("fedavg fair, 20 rounds x 10 steps") == "iid"
    assert [s16.split_of(a) for a in s16.SKEW] == [
        "dirichlet:1", "quantity:0.5", "dirichlet:0.1", "dirichlet:0.1"]  # fmt: skip
    assert {s16.split_of(a) for a in (*s16.SERVER_STEP, *s16.UDEC_LOCAL)} == {"iid"}
    # Every arm runs in exactly one phase.
    phases = [
        a
        for p in (
            "main",
            "extra",
            "splits",
            "lr",
            "local",
            "local50",
            "server-step",
            "skew",
            "udec-local",
            "methods",
            "fedsgd",
            "mse",
            "udec-mse",
            "udec-mse50",
        )
        for a, _ in s16.plan(p)
        if _ == s16.SEEDS[0]
    ]
    assert sorted(phases) == sorted(s16.ARMS)
    args = s16.fed_args("full", 0, s16.ARMS["fedavg fair, 20 rounds x 10 steps"][2])
    assert args.count("--rounds") == 1 and args[args.index("--rounds") + 1] == 20
    default = s16.fed_args("full", 0, s16.FAIR)
    assert default[default.index("--rounds") + 1] == s16.FED["rounds"]
    assert len({s16.run_dir(a, 0) for a in s16.ARMS}) == len(s16.ARMS)  # no two arms share a RUN


def test_s16_claims_of_studies_6_and_7(monkeypatch):
    import s16_fed_recipe as s16

    monkeypatch.setattr(s16, "SEEDS", (0, 1, 2))
    per = {a: {"seed0": {"fid": 1.0, "bytes": b}} for a, b in (
        ("fedavg fair", 100), ("usplit fair", 75), ("ulatdec fair", 59), ("udec fair", 26))}  # fmt: skip

    def r(mean, lo, hi, count=3):
        return {"mean": mean, "count": count, "interval95": [lo, hi]}

    ratios = {"fedavg fair q8 / fedavg fair": r(1.8, 1.2, 2.4),
              "fedprox 0.01 fair dirichlet:0.1 / fedavg fair dirichlet:0.1": r(0.97, 0.9, 1.04),
              "fedavg fair dirichlet:0.1 / fedavg fair": r(1.05, 1.01, 1.09)}  # fmt: skip
    got = s16.methods_checks(per, ratios)
    assert got == {
        "bytes: udec < ulatdec < usplit < full (saved: usplit 25.0%, ulatdec 41.0%, udec 74.0%)":
            "held",
        "8-bit FID <= 1.75x full precision (mean)": "not held",
        "FedProx 0.01 better than FedAvg under dirichlet:0.1": "within noise",
        "label skew (dirichlet:0.1) hurts FedAvg": "held",
    }  # fmt: skip
    per["usplit fair"]["seed0"]["bytes"] = 50  # now below ULATDEC's
    ratios["fedprox 0.01 fair dirichlet:0.1 / fedavg fair dirichlet:0.1"] = r(0.9, 0.85, 0.95)
    ratios["fedavg fair dirichlet:0.1 / fedavg fair"] = r(1.0, 0.9, 1.1, count=2)
    got = s16.methods_checks(per, ratios)
    assert list(got.values()) == ["not held", "not held", "held", "not yet measured"]


def test_s16_report_body_renders_ratios_and_a_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "FIGS", tmp_path)
    per = {"central": {"seed0": {"fid": 5.0, "bytes": 0}, "seed1": {"fid": 6.0, "bytes": 0}},
           "fedavg fair": {"seed0": {"fid": 15.0, "bytes": 2e8}, "seed1": {"fid": 12.0, "bytes": 2e8}}}  # fmt: skip
    r = {"per_seed": per,
         "summary": {a: common.summarise([x["fid"] for x in v.values()]) for a, v in per.items()},
         "ratios": {"fedavg fair / central": {**common.summarise([3.0, 2.0]),
                                             "interval95": common.t_interval([3.0, 2.0])},
                    "fedavg fair / fedavg paper": {**common.summarise([0.5, 0.7]),
                                                  "interval95": [0.1, 1.1]}},
         "checks": {"x": "not held"}}  # fmt: skip
    text = "\n".join(report.body_s16(r))
    assert "| fedavg fair | 2 | 13.50 ± 2.12 (12.00–15.00) | 2.50 ± 0.71 (2.00–3.00)" in text
    assert "| fedavg fair / fedavg paper | 0.60 ± 0.14 (0.50–0.70) | [0.10, 1.10] |" in text
    assert "200.0 MB" in text and (tmp_path / "repro_s16.png").stat().st_size > 0
    assert (tmp_path / "repro_s16_bytes.png").stat().st_size > 0


def test_save_on_a_fresh_clone_keeps_the_recorded_commands_and_wall(tmp_path, monkeypatch):
    """The runs of an earlier session live on another machine: its log is gone, its JSON is not."""
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "ROOT", tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    log = tmp_path / "runs" / "commands.jsonl"
    log.write_text(json.dumps({"study": "sx", "cmd": "a", "wall_s": 10.0}) + "\n")
    common.save("sx", {"verdict": "held"})
    first = json.loads((tmp_path / "results" / "sx.json").read_text())
    assert first["commands"] == ["a"] and first["wall_s"] == 10.0
    common.save("sx", {"verdict": "held"})  # same machine, same log: nothing counted twice
    assert json.loads((tmp_path / "results" / "sx.json").read_text())["wall_s"] == 10.0
    log.write_text(json.dumps({"study": "sx", "cmd": "b", "wall_s": 5.0}) + "\n")  # a new clone
    common.save("sx", {"verdict": "held"})
    again = json.loads((tmp_path / "results" / "sx.json").read_text())
    assert again["commands"] == ["a", "b"] and again["wall_s"] == 15.0
    common.save("sx", {"verdict": "held"})  # saved again on the new clone: still 15
    common.save("sx", {"verdict": "held"})
    assert json.loads((tmp_path / "results" / "sx.json").read_text())["wall_s"] == 15.0
    with log.open("a") as f:  # more work on the new clone, then a third machine
        f.write(json.dumps({"study": "sx", "cmd": "c", "wall_s": 1.0}) + "\n")
    common.save("sx", {"verdict": "held"})
    assert json.loads((tmp_path / "results" / "sx.json").read_text())["wall_s"] == 16.0
    log.write_text(json.dumps({"study": "sx", "cmd": "a", "wall_s": 2.0}) + "\n")
    common.save("sx", {"verdict": "held"})
    third = json.loads((tmp_path / "results" / "sx.json").read_text())
    assert third["wall_s"] == 18.0 and third["commands"] == ["a", "b", "c"]


def test_s16_report_keeps_recorded_arms_whose_runs_are_elsewhere(tmp_path, monkeypatch):
    import s16_fed_recipe as s16

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "ROOT", tmp_path / "runs")
    monkeypatch.setattr(s16, "ROOT", tmp_path / "runs")
    (tmp_path / "results").mkdir()
    recorded = {"central": {"seed0": {"fid": 5.0, "bytes": 0}},
                "fedavg fair": {"seed0": {"fid": 10.0, "bytes": 2e8}}}  # fmt: skip
    (tmp_path / "results" / "s16_fed_recipe.json").write_text(json.dumps({"per_seed": recorded}))
    r = s16.report()
    assert r["per_seed"] == recorded
    assert r["ratios"]["fedavg fair / central"]["mean"] == 2.0
    # An arm whose options changed since, or a record at another scale, is not reused.
    changed = {"per_seed": recorded, "setup": {"arms": {"fedavg fair": ["fed", "full", ["x"]]}}}
    (tmp_path / "results" / "s16_fed_recipe.json").write_text(json.dumps(changed))
    assert "fedavg fair" not in s16.report()["per_seed"]
    other = {"per_seed": recorded, "scale": common.SCALE / 10}
    (tmp_path / "results" / "s16_fed_recipe.json").write_text(json.dumps(other))
    assert s16.report()["per_seed"] == {}


def test_s16_check_takes_the_best_iid_fedavg_arm_on_every_seed(tmp_path, monkeypatch):
    """The issue's bar is met by FedAvg or its best recipe: the check names the best IID FULL arm
    measured on every seed, and ignores an arm of fewer seeds, a non-IID split and UDEC."""
    import s16_fed_recipe as s16

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "ROOT", tmp_path / "runs")
    monkeypatch.setattr(s16, "ROOT", tmp_path / "runs")
    (tmp_path / "results").mkdir()

    def seeds(*fids):
        return {f"seed{s}": {"fid": f, "bytes": 1} for s, f in zip(s16.SEEDS, fids, strict=False)}

    local = "fedavg fair, 50 rounds x 20 steps x batch 13"
    recorded = {
        "central": seeds(5.0, 5.0, 5.0),
        "fedavg fair": seeds(10.0, 10.0, 10.0),  # 2.0x
        local: seeds(7.0, 7.5, 7.0),  # 1.43x: the best on every seed
        "fedavg fair, 10 rounds x 50 steps x batch 26": seeds(5.0),  # one seed: not a candidate
        "fedavg fair classes:2": seeds(5.5, 5.5, 5.5),  # not IID
        "udec fair": seeds(6.0, 6.0, 6.0),  # personal models, a check of their own
        "udec paper": seeds(5.5, 5.5, 5.5),  # the best UDEC arm on every seed
        "udec fair, 10 rounds x 100 steps x batch 13": seeds(5.0),  # one seed: not a candidate
    }
    (tmp_path / "results" / "s16_fed_recipe.json").write_text(json.dumps({"per_seed": recorded}))
    r = s16.report()
    key = f"best FedAvg recipe on every seed ({local}) <= 1.5x central (mean)"
    assert r["checks"] == {
        key: "held",
        "best UDEC recipe on every seed (udec paper) personal models <= 2x central (mean)": "held",
    }
    assert r["best_fedavg"]["arm"] == local
    assert r["best_fedavg"]["mean"] == pytest.approx((1.4 + 1.5 + 1.4) / 3)
    assert r["verdict"] == "held"
    recorded[local] = seeds(8.0, 8.0, 8.0)  # 1.6x: the best arm misses the bar
    (tmp_path / "results" / "s16_fed_recipe.json").write_text(json.dumps({"per_seed": recorded}))
    r = s16.report()
    assert r["checks"][key] == "not held" and r["verdict"] == "not held"
    # No IID FedAvg arm on every seed: the claim's main half is unmeasured, whatever UDEC scored.
    for arm in ("fedavg fair", local):
        recorded[arm] = seeds(7.0)
    (tmp_path / "results" / "s16_fed_recipe.json").write_text(json.dumps({"per_seed": recorded}))
    r = s16.report()
    assert list(r["checks"].values()) == ["held"] and r["verdict"] == "inconclusive"


def test_s14_keeps_a_seed_recorded_elsewhere_and_reruns_it_only_on_request(tmp_path, monkeypatch):
    import s14_dit_experts as s14

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "ROOT", tmp_path / "runs")
    monkeypatch.setattr(s14, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(s14, "ROOT", tmp_path / "runs")
    (tmp_path / "results").mkdir()
    row = {"dit monolith": 100.0, "dit mixture": 70.0, "dit mixture / dit monolith": 0.7}
    saved = tmp_path / "results" / "s14_dit_experts.json"
    other = {"per_seed": {"seed0": row}, "setup": {**s14.SETUP, "steps": 1}}
    saved.write_text(json.dumps(other))  # another budget: its rows are not this study's
    assert s14.recorded() == {}
    saved.write_text(json.dumps({**other, "setup": s14.SETUP, "scale": common.SCALE / 10}))
    assert s14.recorded() == {}
    saved.write_text(json.dumps({"per_seed": {"seed0": row}, "setup": s14.SETUP}))
    (tmp_path / "results" / "s10_routing_budgets.json").write_text(json.dumps({"cells": {
        f"b500/K4/{r}": {"per_seed": []} for r in s14.ROUTINGS}}))  # fmt: skip
    r = s14.report()
    assert r["per_seed"] == {"seed0": row}
    assert r["setup"]["dit_seeds_recorded_elsewhere"] == [0]
    assert r["verdict"] == "inconclusive"  # one seed of three
    assert "DiT seed(s) 0 as recorded on another machine" in "\n".join(report.body_s14(r))
    trained = []

    def ddm_run(run, **kw):
        run.mkdir(parents=True, exist_ok=True)
        trained.append(kw["seed"])

    monkeypatch.setattr(s14, "ddm_run", ddm_run)
    monkeypatch.setattr(s14, "ev", lambda *a, **kw: {})
    s14.work(None)
    assert trained == [s for s in s14.SEEDS if s != 0]  # the recorded seed is not re-run
    for s in s14.SEEDS:
        (s14.run_dir(s) / "evaluated").unlink(missing_ok=True)
    trained.clear()
    s14.main(["run", "--repeat"])
    assert trained == [*[s for s in s14.SEEDS if s != 0], 0]  # unmeasured first, the repeat last


def test_s12_arms_have_distinct_run_directories_without_spaces():
    import s12_distill_budget as s12

    dirs = {s12.run_dir(a, 0) for a in s12.ARMS}
    assert len(dirs) == len(s12.ARMS)
    assert all(" " not in d.parent.name for d in dirs)
    assert s12.ARMS["own-soup lr 1e-3"][2][-1] == "train.lr=0.001"


def test_s12_longer_students_are_reported_beside_the_claim_but_not_checked(tmp_path, monkeypatch):
    """A continued student (the FLOP curve past a third) gets its ratio and FLOPs, is not one of
    the claim's checks, and renders with the options of the arm it continues."""
    import s12_distill_budget as s12

    monkeypatch.setattr(s12, "ROOT", tmp_path)
    monkeypatch.setattr(s12, "previous", lambda study: None)
    saved = {}
    monkeypatch.setattr(s12, "save", lambda study, result: saved.update(result))
    src = tmp_path / "src"
    fid = {"monolith": 8.0, "ensemble": 6.0}
    students = {"own-soup lr 1e-3": 8.8, "own-soup lr 1e-3, 2x steps": 8.0}

    def ev(run, model, seed, routing=None):
        if model != "distilled":
            return {"fid": fid[model], "train_flops": 300.0}
        arm = next(a for a in students if s12.run_dir(a, seed) == run)
        return {"fid": students[arm] + seed * 0.1}

    monkeypatch.setattr(s12, "ev", ev)
    for arm, steps in (("own-soup lr 1e-3", 5000), ("own-soup lr 1e-3, 2x steps", 10000)):
        for seed in s12.SEEDS:
            run = s12.run_dir(arm, seed)
            (run / "distilled").mkdir(parents=True)
            (run / "distilled" / "meta.json").write_text(json.dumps({"train_flops": steps / 50}))
            (run / "evaluated").write_text(str(src))
    r = s12.report()
    assert s12.root_arm("own-soup lr 1e-3, 3x steps") == "own-soup lr 1e-3"
    longer = r["summary"]["own-soup lr 1e-3, 2x steps"]
    assert longer["ratio_to_monolith"]["mean"] == pytest.approx((8.0 + 8.1 + 8.2) / 3 / 8.0)
    assert longer["train_flops_vs_monolith"]["mean"] == pytest.approx(200 / 300)
    assert "student (own-soup lr 1e-3) <= 1.1x monolith" in r["checks"]
    assert not any("2x steps" in k for k in r["checks"])
    assert r["verdict"] == "inconclusive"  # the other arms have no seeds here
    text = "\n".join(report.body_s12(json.loads(json.dumps(r))))
    assert "| own-soup lr 1e-3, 2x steps | own | 16 | soup, train.lr=0.001 | 1.012" in text


def test_s12_work_resolves_the_largest_expert_and_the_step_factor(tmp_path, monkeypatch):
    """Stop 34's arms: the expert start names the largest cluster of the seed's own partition, and
    the batch-8 arm runs twice the steps, so both students cost the FLOPs of batch 16 x STEPS."""
    import numpy as np
    import s12_distill_budget as s12

    monkeypatch.setattr(s12, "ROOT", tmp_path)
    monkeypatch.setattr(s12, "SEEDS", (0,))
    new = ("own-soup lr 1e-3, batch 8 x 2 steps", "own-expert lr 1e-3")
    monkeypatch.setattr(s12, "recorded", lambda arm, seed: None if arm in new else {"x": 1})
    monkeypatch.setattr(s12, "source", lambda seed, train=True: tmp_path / "src")

    def prepare(arm, seed):
        run = s12.run_dir(arm, seed)
        run.mkdir(parents=True)
        parts = {f"part_{k}": np.arange(n) for k, n in enumerate((3, 7, 5))}
        np.savez(run / "partition.npz", num_parts=3, **parts)
        return run

    calls = []
    monkeypatch.setattr(s12, "prepare", prepare)
    monkeypatch.setattr(s12, "cli", lambda *a, study: calls.append([str(x) for x in a]))
    monkeypatch.setattr(s12, "ev", lambda *a, **k: {"fid": 1.0})
    s12.work(None)
    distill = {c[1]: c for c in calls if c[0] == "distill"}
    assert len(distill) == 2  # the recorded arms are not re-run

    def opt(call, name):
        return call[call.index(name) + 1]

    expert = distill[str(s12.run_dir("own-expert lr 1e-3", 0))]
    assert opt(expert, "--init") == "expert:1" and opt(expert, "--batch") == "16"
    small = distill[str(s12.run_dir("own-soup lr 1e-3, batch 8 x 2 steps", 0))]
    assert opt(small, "--batch") == "8" and opt(small, "--init") == "soup"
    assert int(opt(small, "--steps")) * 8 == int(opt(expert, "--steps")) * 16 == s12.STEPS * 16


def test_s20_arms_have_distinct_runs_and_the_headline_check_needs_three_seeds(
    tmp_path, monkeypatch
):
    import s20_tiny_imagenet as s20

    carried = (
        "classes-tiny-long",
        "classes-tiny-longer",
        "classes-tiny-guidance",
        "classes-tiny-64-long",
        "classes-tiny-routed",
    )
    runs = [
        s20.run_dir(a, steps)
        for p in s20.PHASES
        if p not in carried  # these carry other phases' runs on, or evaluate them again
        for a in s20.arms(p)
        for steps in a["budgets"]
    ]
    assert len(runs) == len(set(runs)) and all(" " not in r.name for r in runs)
    for long, base in zip(s20.arms("classes-tiny-long"), s20.arms("classes-tiny"), strict=True):
        *shared, last = [s20.run_dir(long, steps) for steps in long["budgets"]]  # carried on
        assert shared == [s20.run_dir(base, s) for s in s20.TINY_STEPS] and last not in runs
    longer = [s20.run_dir(a, s) for a in s20.arms("classes-tiny-longer") for s in a["budgets"]]
    long = [s20.run_dir(a, s) for a in s20.arms("classes-tiny-long") for s in a["budgets"]]
    assert set(long) < set(longer) and not set(longer) - set(long) & set(runs)
    (big,) = s20.arms("classes-tiny-64-long")  # seed 0's 64x64 models, carried on
    first, second = (s20.run_dir(big, s) for s in big["budgets"])
    assert first == s20.run_dir(s20.arms("classes-tiny-64")[0], s20.TINY_STEPS[0])
    assert second not in runs and big["size"] == 64 and big["seed"] == 0
    # the guidance arms evaluate classes-tiny-long's last models, each scale on every seed
    guided = [
        (s20.run_dir(a, a["budgets"][-1]), a["guidance"]) for a in s20.arms("classes-tiny-guidance")
    ]
    assert {r for r, _ in guided} == {
        s20.run_dir(a, s20.LONG_STEPS) for a in s20.arms("classes-tiny")
    }
    assert len(set(guided)) == len(guided) == 3 * len(s20.GUIDANCES)
    # the routed arms give classes-tiny-long's last models a router, nothing else
    routed = [s20.run_dir(a, b) for a in s20.arms("classes-tiny-routed") for b in a["budgets"]]
    assert routed == [s20.run_dir(a, s20.LONG_STEPS) for a in s20.arms("classes-tiny")]
    monkeypatch.setattr(s20, "BASE", tmp_path)
    monkeypatch.setattr(s20, "save", lambda study, out: None)
    monkeypatch.setattr(s20, "previous", lambda study: None)  # nothing measured elsewhere
    n = s20.BUDGET["n"]
    fids = {0: (6.0, 5.0), 1: (8.0, 7.0), 2: (10.0, 9.5)}  # (monolith, top1) per seed
    steps = s20.BUDGET["steps"][0]
    for arm in s20.arms("head") + s20.arms("seeds"):
        mono, top1 = fids[arm["seed"]]
        run = s20.run_dir(arm, steps)
        run.mkdir(parents=True)
        rows = [
            {"kind": "eval", "model": "monolith", "n": n, "fid": mono},
            {"kind": "eval", "model": "ensemble", "routing": "top1", "n": n, "fid": top1},
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = s20.report()
    ratios = out["headline"][str(steps)]["top1_ratios"]
    assert sorted(ratios) == sorted(top / mono for mono, top in fids.values())
    (check,) = out["checks"].values()
    # mean 0.886 <= 0.9 and every seed below 1: held
    assert check == "held" and abs(sum(ratios) / 3 - (5 / 6 + 7 / 8 + 9.5 / 10) / 3) < 1e-12


def test_s20_classes_phase_reports_mixture_per_seed_and_checks_it_on_three_seeds(
    tmp_path, monkeypatch
):
    import s20_tiny_imagenet as s20

    monkeypatch.setattr(s20, "BASE", tmp_path)
    monkeypatch.setattr(s20, "save", lambda study, out: None)
    monkeypatch.setattr(s20, "previous", lambda study: None)  # nothing measured elsewhere
    n = s20.BUDGET["n"]
    fids = {0: (100.0, 80.0), 1: (90.0, 95.0), 2: (110.0, 88.0)}  # (monolith, mixture)
    arms = s20.arms("classes")
    assert [a["seed"] for a in arms] == [0, 1, 2] and all(a["by"] == "classes" for a in arms)
    assert {a.get("partition_seed") for a in arms} == {0}  # one partition, seeds vary training
    for arm in arms:
        mono, mix = fids[arm["seed"]]
        run = s20.run_dir(arm, arm["budgets"][0])
        run.mkdir(parents=True)
        rows = [
            {"kind": "eval", "model": "monolith", "n": n, "fid": mono},
            {"kind": "eval", "model": "ensemble", "routing": "mixture", "n": n, "fid": mix},
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = s20.report()
    mix = out["classes_tables"][f"classes/{s20.CLASSES_STEPS}"]["mixture"]
    want = [m / mono for mono, m in (fids[s] for s in (0, 1, 2))]
    assert mix["ratios"] == want and abs(mix["mean"] - sum(want) / 3) < 1e-12
    lo, hi = mix["interval"]
    assert lo < mix["mean"] < hi
    (name,) = [k for k in out["checks"] if "whole-class" in k]
    assert out["checks"][name] == "not held"  # seed 1 is above 1 (and the mean 0.88 below 0.9)


def test_s20_keeps_runs_measured_elsewhere_and_tables_each_budget(tmp_path, monkeypatch):
    """A run not on this machine keeps the numbers the last save recorded; a run measured here
    replaces its recorded entry; the tiny phase's two budgets are two tables, each checked."""
    import s20_tiny_imagenet as s20

    monkeypatch.setattr(s20, "BASE", tmp_path)
    monkeypatch.setattr(s20, "save", lambda study, out: None)
    elsewhere = {"phase": "classes", **s20.arms("classes")[0], "steps": s20.CLASSES_STEPS,
                 "rows": {"mixture": {"fid": 9.0, "monolith_fid": 10.0, "ratio": 0.9}}}  # fmt: skip
    stale = {**elsewhere, "phase": "classes-tiny", "rows": {"mixture": {"ratio": 5.0}}}
    arms = s20.arms("classes-tiny")
    recorded = {"gone-run": elsewhere, s20.run_dir(arms[0], arms[0]["budgets"][0]).name: stale}
    monkeypatch.setattr(s20, "previous", lambda study: {"results": recorded})
    n = s20.BUDGET["n"]
    for arm in arms:
        for j, steps in enumerate(arm["budgets"]):
            run = s20.run_dir(arm, steps)
            run.mkdir(parents=True)
            mono, mix = 100.0, (110.0 if j == 0 else 80.0 + arm["seed"])
            rows = [
                {"kind": "eval", "model": "monolith", "n": n, "fid": mono, "train_flops": 4e12},
                {"kind": "eval", "model": "ensemble", "routing": "mixture", "n": n, "fid": mix,
                 "train_flops": 4e12},
            ]  # fmt: skip
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = s20.report()
    assert out["results"]["gone-run"] == elsewhere
    warm = s20.arms("classes-tiny-warm")[0]  # compared with the monolith it started from
    assert s20.monolith_run(warm, warm["budgets"][0]) == s20.run_dir(arms[0], warm["budgets"][0])
    assert s20.run_dir(warm, warm["budgets"][0]) != s20.monolith_run(warm, warm["budgets"][0])
    first, second = arms[0]["budgets"]
    assert out["results"][s20.run_dir(arms[0], first).name]["rows"]["mixture"]["ratio"] == 1.1
    short = out["classes_tables"][f"classes-tiny/{first}"]["mixture"]
    long = out["classes_tables"][f"classes-tiny/{second}"]["mixture"]
    assert short["ratios"] == [1.1] * 3 and long["ratios"] == [0.8, 0.81, 0.82]
    verdicts = {k: v for k, v in out["checks"].items() if "tiny preset" in k}
    assert verdicts == {
        k: v
        for k, v in (
            (f"class-cond K=4, whole-class clusters, tiny preset, mixture <= 0.9x monolith "
             f"(mean), every seed < 1, {first} steps", "not held"),
            (f"class-cond K=4, whole-class clusters, tiny preset, mixture <= 0.9x monolith "
             f"(mean), every seed < 1, {second} steps", "held"),
        )
    }  # fmt: skip


def test_s20_guidance_arms_table_apart_from_the_same_runs_at_the_study_guidance(
    tmp_path, monkeypatch
):
    """Rows at another guidance scale in the same run directory make their own table per scale;
    the study-guidance table of that budget keeps only the study-guidance rows."""
    import s20_tiny_imagenet as s20

    monkeypatch.setattr(s20, "BASE", tmp_path)
    monkeypatch.setattr(s20, "save", lambda study, out: None)
    monkeypatch.setattr(s20, "previous", lambda study: None)
    n, steps, g0 = s20.BUDGET["n"], s20.LONG_STEPS, s20.BUDGET["guidance"]
    fid = {g0: (100.0, 90.0), 1.0: (150.0, 160.0), 3.0: (120.0, 100.0)}  # (monolith, mixture)
    for arm in s20.arms("classes-tiny-long"):
        run = s20.run_dir(arm, steps)
        run.mkdir(parents=True)
        rows = [
            {
                "kind": "eval",
                "model": m,
                "routing": r,
                "n": n,
                "guidance": g,
                "fid": f + arm["seed"],
            }
            for g, (mono, mix) in fid.items()
            for m, r, f in (("monolith", None, mono), ("ensemble", "mixture", mix))
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = s20.report()
    tables = out["classes_tables"]
    for g, (mono, mix) in fid.items():
        key = (
            f"classes-tiny-long/{steps}"
            if g == g0
            else f"classes-tiny-guidance/{steps}/guidance{g:g}"
        )
        want = [(mix + s) / (mono + s) for s in (0, 1, 2)]
        assert tables[key]["mixture"]["ratios"] == want, key
        assert tables[key]["guidance"] == (None if g == g0 else g)
    # guidance 3: 0.83x on every seed, held, but exploratory (not part of the verdict); the
    # study's 2: 0.900x, 0.901x, 0.902x (a mean above 0.9), read from its own rows though the
    # guidance-3 rows come after them in the file
    assert "held" not in out["checks"].values() and out["verdict"] != "held"
    held = [k for k, v in out["exploratory"].items() if v == "held"]
    assert len(held) == 1 and "guidance 3" in held[0] and len(out["exploratory"]) == 2


def test_s20_routed_arms_table_their_routings_apart_from_the_same_runs_mixture(
    tmp_path, monkeypatch
):
    """top1, sample:1 and full rows in classes-tiny-long's RUNs make the routed phase's table, against the
    same monolith row; the long phase's table keeps mixture alone, and the routed one no check."""
    import s20_tiny_imagenet as s20

    monkeypatch.setattr(s20, "BASE", tmp_path)
    monkeypatch.setattr(s20, "save", lambda study, out: None)
    monkeypatch.setattr(s20, "previous", lambda study: None)
    n, g = s20.BUDGET["n"], s20.BUDGET["guidance"]
    fid = {"mixture": 90.0, "top1": 95.0, "sample:1": 92.0, "full": 85.0}
    for arm in s20.arms("classes-tiny-long"):
        run = s20.run_dir(arm, s20.LONG_STEPS)
        run.mkdir(parents=True)
        rows = [{"kind": "eval", "model": "monolith", "n": n, "guidance": g, "fid": 100.0}]
        rows += [{"kind": "eval", "model": "ensemble", "routing": r, "n": n, "guidance": g,
                  "fid": f + arm["seed"]} for r, f in fid.items()]  # fmt: skip
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = s20.report()
    long, routed = (out["classes_tables"][f"{p}/{s20.LONG_STEPS}"]
                    for p in ("classes-tiny-long", "classes-tiny-routed"))  # fmt: skip
    routings = set(fid)
    assert routings & set(long) == {"mixture"} and routings & set(routed) == routings - {"mixture"}
    for r in ("top1", "sample:1", "full"):
        assert routed[r]["ratios"] == [(fid[r] + s) / 100.0 for s in (0, 1, 2)]
    assert not any("routed" in k or "top1" in k for k in out["checks"])


def test_s19_and_s20_bodies_render(tmp_path, monkeypatch):
    r19 = {
        "setup": {"seeds": [0, 1]},
        "table": {
            "10 classes": {
                "images": 500,
                "classes": 10,
                "agreement": {
                    "pixel PCA 64": {"K=4": {"nmi": [0.05, 0.07], "ami": [0.01, 0.03]}},
                    "inception 128": {"K=4": {"nmi": [0.3, 0.4], "ami": [0.2, 0.3]}},
                },
                "default_over_pca_nmi": {"K=4": 5.833},
            }
        },
        "checks": {"c": "held"},
    }
    text = "\n".join(report.BODIES["s19_content_clusters"](r19))
    assert "| inception 128 | 0.350 (0.250) |" in text and "K=4 5.8x" in text
    r20 = {
        "results": {
            "run-a": {
                "steps": 10,
                "rows": {"top1": {"fid": 5.0, "monolith_fid": 6.0, "ratio": 5 / 6, "floor": 1.0}},
            }
        },
        "headline": {},
        "checks": {},
    }
    text = "\n".join(report.BODIES["s20_tiny_imagenet"](r20))
    assert "| run-a | 10 | top1 | 5.00 | 6.00 | 0.833 | 1.00 |" in text
    assert "![s20]" not in text  # no FLOPs recorded: no figure
    monkeypatch.setattr(report, "FIGS", tmp_path)
    mix = {"fid": 5.0, "monolith_fid": 6.0, "ratio": 5 / 6, "train_flops": 2e12,
           "monolith_train_flops": 2e12}  # fmt: skip
    r20["results"]["run-a"].update(
        cond=True, preset="tiny", by="classes", K=4, size=32, seed=0, rows={"mixture": mix}
    )
    r20["setup"] = {"preset": "compact"}
    r20["classes_tables"] = {"classes-tiny/10": {
        "phase": "classes-tiny", "steps": 10, "preset": "tiny", "cond": False, "K": 4, "size": 32,
        "mixture": {"seeds": [0], "ratios": [5 / 6], "ensemble_fid": [5.0], "monolith_fid": [6.0],
                    "mean": 5 / 6},
        "expert_loss_gap": {"count": 4, "mean": -0.02, "min": -0.03, "max": -0.01}}}  # fmt: skip
    text = "\n".join(report.BODIES["s20_tiny_imagenet"](r20))
    assert "K=4, `tiny` preset, unconditional, 32x32, 10 steps, mixture, seeds 0" in text
    assert "every one negative: the experts model their clusters better" in text
    assert "![s20](figures/repro_s20.png)" in text and (tmp_path / "repro_s20.png").is_file()
    # another guidance scale: its table names the scale; its points stay out of the FLOPs figure
    r20["classes_tables"]["classes-tiny-guidance/10/guidance3"] = {
        **r20["classes_tables"]["classes-tiny/10"], "cond": True, "guidance": 3.0}  # fmt: skip
    text = "\n".join(report.BODIES["s20_tiny_imagenet"](r20))
    assert "class-conditional, 32x32, 10 steps, guidance 3, mixture" in text
    assert "Exploratory" not in text
    r20["exploratory"] = {"guidance 3 check": "held"}
    text = "\n".join(report.BODIES["s20_tiny_imagenet"](r20))
    assert "Exploratory, not part of the verdict: guidance 3 check: held." in text
    guided = {"results": {"g": {**r20["results"]["run-a"], "guidance": 3.0}}, "setup": r20["setup"]}
    assert report._s20_figure(guided) is None


def test_s21_keeps_arms_measured_elsewhere_and_prefers_a_run_here(tmp_path, monkeypatch):
    """An arm whose run directory is not on this machine keeps the FID the last save recorded
    (so a new attack can run against honest arms measured before); an arm run here wins."""
    import s21_robust_aggregation as s21

    monkeypatch.setattr(s21, "ROOT", tmp_path)
    c = s21.FED["clients"]
    seeds = list(s21.SEEDS)
    five = {r: {a: {"per_seed": [], "seeds": []} for a in s21.ATTACKS} for r in s21.RULES}
    for r in s21.RULES:
        for a in ("honest", "scale"):
            five[r][a] = {"per_seed": [10.0 + i for i, _ in enumerate(seeds)], "seeds": seeds}
    saved_before = {"setup": s21.setup(), "five_clients": five}
    monkeypatch.setattr(s21, "previous", lambda study: {**saved_before, "setup": {"preset": "x"}})
    assert s21.done("median", "honest", seeds[1], c) is None  # saved with another set-up
    monkeypatch.setattr(s21, "previous", lambda study: saved_before)
    saved = {}
    monkeypatch.setattr(s21, "save", lambda study, out: saved.update(out))
    assert s21.done("median", "honest", seeds[1], c) == 11.0
    assert s21.done("median", "signflip", seeds[1], c) is None
    assert s21.done("bulyan:1", "honest", seeds[0], 7) is None  # seven clients: another table
    here = s21.run_dir("median", "honest", seeds[1], c)
    here.mkdir(parents=True)
    assert s21.done("median", "honest", seeds[1], c) is None  # here but not scored: not recorded
    row = {"kind": "fed_eval", "n": s21.FED["n"], "fid": {"mean": 7.5}}
    (here / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    assert s21.done("median", "honest", seeds[1], c) == 7.5
    out = s21.report()
    assert out["five_clients"]["median"]["honest"]["per_seed"] == [10.0, 7.5, 12.0][: len(seeds)]
    assert out["five_clients_seeds"]["scale"] == seeds and out["five_clients_seeds"]["noise"] == []
    assert here.name not in out["measured_elsewhere"]
    assert s21.run_dir("fedavg", "scale", seeds[0], c).name in out["measured_elsewhere"]
    # the recorded scaled arms equal the honest ones here: FedAvg is not 1.5x worse under them
    assert saved["checks"]["fedavg_degrades_under_scale"] == "not held"
