"""The CLI skeleton: help, exit codes, one-line errors."""

from __future__ import annotations

import pytest

from taming_plugins.cli import main


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "plugins" in capsys.readouterr().out


def test_usage_error_exits_two(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["plugins", "--kind", "nonsense"])
    assert exc.value.code == 2


def test_every_subcommand_has_help(capsys):
    from taming_plugins.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "plugins" in sub.choices
    for name in sub.choices:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name


def test_runtime_error_is_one_line_exit_one(capsys, monkeypatch):
    import taming_core

    def boom(*a, **k):
        raise taming_core.RegistryError("unknown quantizer 'x'; did you mean 'vq'?")

    monkeypatch.setattr(taming_core, "entries", boom)
    assert main(["plugins"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "taming plugins: error: unknown quantizer 'x'; did you mean 'vq'?"


def test_plugins_lists_kinds_names_origins(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["KIND", "NAME", "ORIGIN"]
    assert "built-in" in out
