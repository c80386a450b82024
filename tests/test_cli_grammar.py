"""One CLI grammar (issue 15 item 3): every verb's --help shows defaults and a help line per option, the old
spellings still work for one release with one warning line, `rtl select weights|scores` are two verbs, the
finetune/pretrain options (and their defaults) come from the config models, and a bad value is one
`rtl: error:` line with exit 2."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_select_cli import world  # noqa: F401 (module fixture: a corpus, a trained and an untrained small_cnn)

from rtl import cli
from rtl.cliargs import RtlParser, add_model_options, model_kwargs
from rtl.errors import RtlError


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `rtl argv` in-process."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def _verbs(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of every verb and sub-verb, options populated."""
    parser._populate()
    yield path, parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _verbs(sub, (*path, name))


VERBS = [p for p, _ in _verbs(cli.build_parser()) if p]


@pytest.mark.parametrize("path", VERBS, ids=[" ".join(p) for p in VERBS])
def test_every_verb_help_exits_0_with_defaults_and_a_help_line_per_option(path, capsys) -> None:
    parser = dict(_verbs(cli.build_parser()))[path]
    rc, out, err = _run([*path, "--help"], capsys)
    assert rc == 0, err
    shown = [a for a in parser._actions if a.help is not argparse.SUPPRESS
             and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    assert all(a.help for a in shown), [a.option_strings or a.dest for a in shown if not a.help]
    with_default = [a for a in shown if a.option_strings and a.nargs != 0 and a.default not in (None, "")
                    and not a.required]
    for a in with_default:  # each such option's line carries its default
        value = ",".join(map(str, a.default)) if isinstance(a.default, list) else str(a.default)
        assert f"(default: {value})" in " ".join(out.split()), (a.option_strings, out)
    hidden = [s for a in parser._actions if a.help is argparse.SUPPRESS for s in a.option_strings]
    for old in hidden:  # deprecated spellings are not advertised
        assert f"{old} " not in out and f"{old}," not in out, old


def test_top_level_help_speaks_to_users(capsys) -> None:
    rc, out, _ = _run(["--help"], capsys)
    assert rc == 0 and "examples:" in out and "rtl demo" in out and "Thin" not in out
    lines = out.splitlines()
    for verb in ("synth", "dataset", "corpus", "pretrain", "finetune", "select", "rank", "sweep", "predict", "demo"):
        line = next(x for x in lines if x.strip().startswith(verb + " "))
        assert len(line.split(None, 1)[1]) > 20, line  # one line saying what the user gets
    for old in ("--model", "--gpu", "--num-workers", "--score "):
        assert old not in out


@pytest.mark.parametrize("argv", [["--help"], ["finetune", "--help"], ["pretrain", "--help"]])
def test_help_imports_no_torch_or_ray(argv: list[str]) -> None:
    """--help answers fast: options generated from config models must not pull torch/Ray in."""
    code = (f"import sys\nfrom rtl.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr.strip() == "[]", r.stderr


# (old argv, new argv, namespace attribute, expected value): the old spelling parses to the new one's value
ALIASES = [
    (["pretrain", "--out", "C", "--model", "small_cnn"], ["pretrain", "--out", "C", "--backbone", "small_cnn"],
     "backbone", "small_cnn"),
    (["pretrain", "--out", "C", "--domain", "a,b"], ["pretrain", "--out", "C", "--domains", "a,b"], "domains", ["a", "b"]),
    (["pretrain", "--out", "C", "--gpu"], ["pretrain", "--out", "C", "--device", "cuda"], "device", "cuda"),
    (["finetune", "--target", "T", "--init", "scratch", "--model", "resnet18"],
     ["finetune", "--target", "T", "--init", "scratch", "--backbone", "resnet18"], "backbone", "resnet18"),
    (["finetune", "--target", "T", "--init", "scratch", "--num-workers", "2"],
     ["finetune", "--target", "T", "--init", "scratch", "--loader-workers", "2"], "loader_workers", 2),
    (["corpus", "info", "C", "--domain", "a", "--domain", "b"], ["corpus", "info", "C", "--domains", "a,b"],
     "domains", ["a", "b"]),
    (["dataset", "import", "--format", "csv", "S", "D", "--name", "x", "--domain", "pcb,smt"],
     ["dataset", "import", "--format", "csv", "S", "D", "--name", "x", "--domains", "pcb,smt"], "domains", ["pcb", "smt"]),
    (["select", "weights", "--target", "T", "--corpus", "C", "--model", "M", "--out", "w.json"],
     ["select", "weights", "--target", "T", "--corpus", "C", "--checkpoint", "M", "--out", "w.json"], "checkpoint", "M"),
    (["select", "scores", "--target", "T", "--corpus", "C", "--score", "logme", "--checkpoints", "A"],
     ["select", "scores", "--target", "T", "--corpus", "C", "--scores", "logme", "--checkpoints", "A"], "scores", ["logme"]),
    (["select", "--target", "T", "--corpus", "C", "--model", "M", "--out", "w.json", "--temperature", "3"],
     ["select", "weights", "--target", "T", "--corpus", "C", "--checkpoint", "M", "--out", "w.json", "--temperature", "3"],
     "checkpoint", "M"),
    (["select", "--target", "T", "--corpus", "C", "--score", "leep", "--checkpoints", "A", "B"],
     ["select", "scores", "--target", "T", "--corpus", "C", "--scores", "leep", "--checkpoints", "A", "B"], "scores", ["leep"]),
]


@pytest.mark.parametrize("old,new,attr,value", ALIASES, ids=[" ".join(a[:2] + a[-2:]) for a, *_ in ALIASES])
def test_deprecated_spelling_still_works_with_one_warning_line(old, new, attr, value, capsys) -> None:
    a_new = cli.build_parser().parse_args(new)
    assert capsys.readouterr().err == ""
    a_old = cli.build_parser().parse_args(old)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtl: warning: ") and "is deprecated, use" in lines[0], err
    assert getattr(a_old, attr) == getattr(a_new, attr) == value
    assert {k: v for k, v in vars(a_old).items() if k != "func"} == {k: v for k, v in vars(a_new).items() if k != "func"}


def test_an_aliased_option_is_still_required_and_shown_as_required(capsys) -> None:
    rc, out, _ = _run(["select", "weights", "--help"], capsys)
    assert rc == 0 and "--checkpoint CKPT" in out and "[--checkpoint" not in out
    rc, _, err = _run(["select", "weights", "--target", "T", "--corpus", "C"], capsys)
    assert rc == 2 and "required: --out, --checkpoint" in err and err.count("\n") == 1, err


def test_old_domain_flag_imports_a_dataset_with_those_tags(tmp_path, capsys) -> None:
    from PIL import Image

    from rtl.data.convention import load_dataset

    for i, label in enumerate(["ok", "ok", "bad", "bad"]):
        (tmp_path / "raw" / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), 40 * i).save(tmp_path / "raw" / label / f"{i}.png")
    rc, _, err = _run(["dataset", "import", "--format", "imagefolder", tmp_path / "raw", tmp_path / "d", "--name", "d",
                       "--domain", "pcb,smt"], capsys)
    assert rc == 0, err
    assert "rtl: warning: --domain is deprecated, use --domains" in err
    assert load_dataset(tmp_path / "d").domain == ("pcb", "smt")


def test_select_weights_and_scores_are_two_verbs(world, capsys) -> None:  # noqa: F811
    from rtl.artifacts.weights import read_weights

    base = ["--target", world / "t_red", "--corpus", world / "corpus"]
    new, old = world / "w_new.json", world / "w_old.json"
    rc, out, err = _run(["select", "weights", *base, "--checkpoint", world / "trained", "--out", new], capsys)
    assert rc == 0 and err == "" and "mass by dataset" in out, err
    w = read_weights(new)
    assert next(iter(w.datasets)) == "red" and w.suggested_datasets[0] == "red"
    rc, _, err = _run(["select", *base, "--model", world / "trained", "--out", old], capsys)  # the old spelling
    assert rc == 0 and err.count("\n") == 1 and "deprecated" in err, err
    assert {k: v for k, v in json.loads(old.read_text()).items() if k != "created"} == \
        {k: v for k, v in json.loads(new.read_text()).items() if k != "created"}

    ranking = world / "ranking.json"
    rc, out, err = _run(["select", "scores", *base, "--checkpoints", world / "untrained", world / "trained",
                         "--out", ranking], capsys)
    assert rc == 0 and err == "", err
    rows = json.loads(ranking.read_text())["ranking"]
    assert Path(rows[0]["checkpoint"]).name == "trained"
    assert {"logme", "leep", "nce", "hscore", "mean_rank"} <= set(rows[0])  # default: every score


def test_parser_from_finetune_config_has_one_option_per_field_with_its_default() -> None:
    from rtl.train.finetune import FinetuneConfig

    p = RtlParser(prog="rtl t")
    fields = add_model_options(p, FinetuneConfig, helps={n: n for n in FinetuneConfig.model_fields})
    assert sorted(fields.values()) == sorted(FinetuneConfig.model_fields)
    options = [a for a in p._actions if a.option_strings and a.dest != "help"]
    assert len(options) == len(FinetuneConfig.model_fields)
    ns = p.parse_args(["--target", "T"])
    want = FinetuneConfig(target="T")
    for dest, name in fields.items():
        assert getattr(ns, dest) == getattr(want, name), name
    assert FinetuneConfig.parse(model_kwargs(ns, fields)) == want
    ns = p.parse_args(["--target", "T", "--lr", "0.5", "--in-channels", "1", "--train-subset", "a.png,b.png", "--probe"])
    cfg = FinetuneConfig.parse(model_kwargs(ns, fields))
    assert (cfg.lr, cfg.in_channels, cfg.train_subset, cfg.probe) == (0.5, 1, ["a.png", "b.png"], True)


def test_finetune_and_pretrain_verbs_take_their_defaults_from_the_models() -> None:
    from rtl.train.finetune import FinetuneConfig
    from rtl.train.pretrain_config import PretrainConfig

    a = cli.build_parser().parse_args(["finetune", "--target", "T", "--init", "scratch"])
    assert FinetuneConfig.parse(model_kwargs(a, a._fields)) == FinetuneConfig(target="T", init="scratch")
    a = cli.build_parser().parse_args(["pretrain", "--out", "ckpt"])
    assert PretrainConfig(**model_kwargs(a, a._fields)) == PretrainConfig(out="ckpt")


def test_pretrain_builds_its_config_from_the_new_flags(monkeypatch, tmp_path, capsys) -> None:
    import rtl.train.pretrain as pretrain

    seen = []

    def fake(cfg, **_):
        seen.append(cfg)
        raise RtlError("stop here")

    monkeypatch.setattr(pretrain, "pretrain_local", fake)
    monkeypatch.chdir(tmp_path)
    common = ["pretrain", "--local", "--quiet", "--corpus", "c", "--out", "o", "--epochs", "2", "--loader-workers", "1"]
    assert _run([*common, "--backbone", "small_cnn", "--domains", "pcb,film"], capsys)[0] == 2
    assert _run([*common, "--model", "small_cnn", "--domain", "pcb,film"], capsys)[0] == 2
    assert len(seen) == 2 and seen[0] == seen[1]
    cfg = seen[0]
    assert (cfg.model, cfg.domains, cfg.epochs, cfg.loader_workers, cfg.use_gpu) == ("small_cnn", ["pcb", "film"], 2, 1, False)
    assert cfg.corpus == str(tmp_path / "c") and cfg.lr == type(cfg).model_fields["lr"].default
    rc, _, err = _run([*common, "--gpu"], capsys)
    assert rc == 2 and "--local runs one CPU process" in err


BAD = [
    (["finetune", "--target", "T", "--init", "scratch", "--lr", "0"], "--lr"),
    (["finetune", "--target", "T", "--init", "scratch", "--label-smoothing", "1"], "--label-smoothing"),
    (["finetune", "--target", "T", "--init", "scratch", "--optimizer", "adam"], "--optimizer"),
    (["pretrain", "--out", "C", "--device", "gpu"], "--device"),
    (["pretrain", "--out", "C", "--backbone", "small_cnn", "--strategy", "best"], "--strategy"),
    (["pretrain", "--out", "C", "--datasets", "a", "--domains", "b"], "--domains"),
    (["select", "weights", "--target", "T", "--corpus", "C", "--checkpoint", "M", "--out", "w", "--top-k", "0"], "--top-k"),
    (["select", "scores", "--target", "T", "--corpus", "C"], "--checkpoints"),
    (["rank", "--target", "T", "--corpus", "C", "--generalist", "G", "--device", "tpu"], "--device"),
    (["corpus", "info", "C", "--domains", ","], "--domains"),
    (["dataset", "import", "--format", "csv", "S", "D", "--name", "x"], "--domains"),
    # the deprecated `rtl select` without a sub-verb keeps its checks and its message
    (["select", "--target", "T", "--corpus", "C", "--top-k", "0"], "--top-k"),
    (["select", "--target", "T", "--corpus", "C"], "select needs --model CKPT and --out weights.json"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_invalid_value_is_one_rtl_error_line_and_exit_2(argv, flag, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(argv, capsys)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("rtl: error: ") and flag in err, err
    assert not any(tmp_path.iterdir())


def test_pretrain_config_checks_are_one_line_rtl_errors(tmp_path) -> None:
    from rtl.train.pretrain import PretrainConfig  # the re-export every caller uses

    for kw, msg in [({"epochs": 0}, "epochs must be >= 1, got 0"), ({"lr": 0}, "lr must be > 0, got 0"),
                    ({"batch_size": 6, "workers": 4}, "batch_size 6 must be a multiple of workers 4"),
                    ({"strategy": "nope"}, "unknown strategy 'nope'"), ({"epoch": 3}, "unknown field 'epoch'"),
                    ({"seed": "x"}, "field seed")]:
        with pytest.raises(RtlError, match=msg) as e:
            PretrainConfig(**kw)
        assert "\n" not in str(e.value)
    cfg = PretrainConfig(corpus=tmp_path / "c", datasets=("a",), out="o")  # Path and tuple still accepted
    assert cfg.corpus == str(tmp_path / "c") and cfg.datasets == ["a"] and Path(cfg.out).is_absolute()
    assert PretrainConfig(**cfg.model_dump()) == cfg  # what Ray Train workers rebuild from


def test_help_never_breaks_a_default_path_at_a_hyphen() -> None:
    """A default path with hyphens (a checkout in /tmp/ci-clone) is shown whole, so it can be copied."""
    from rtl.cliargs import RtlParser

    p = RtlParser(prog="rtl x")
    p.add_argument("--spec", default="/tmp/some-long-checkout-name-with-hyphens/sweeps/demo-family.yaml",
                   help="sweep spec to run, a rather long help line so that the default must wrap onto the next")
    text = p.format_help()
    assert "/tmp/some-long-checkout-name-with-hyphens/sweeps/demo-family.yaml)" in text
