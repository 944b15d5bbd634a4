"""Console output: one logger, --quiet and --verbose, Ray's own lines kept down unless asked for."""

import logging

import pytest

from nsde_ray import cli, paper_tables
from nsde_ray.logs import LEVELS, configure, ray_log_level, tune_verbosity


@pytest.mark.parametrize("build_parser", [cli.build_parser, paper_tables.build_parser], ids=["sweep", "paper_tables"])
@pytest.mark.parametrize("flags, level", [([], "normal"), (["--quiet"], "quiet"), (["--verbose"], "verbose")])
def test_quiet_and_verbose_set_the_level_of_every_line_of_ours(build_parser, flags, level, capsys):
    args = cli.parse_args(build_parser(), flags)
    assert args.log_level == LEVELS[level]
    log = logging.getLogger("nsde_ray.trial")  # any module's logger reports through nsde_ray's handlers
    log.info("progress")
    log.warning("trouble")
    out, err = capsys.readouterr()
    assert ("[nsde-ray] progress" in out) == (level != "quiet") and "progress" not in err
    assert "[nsde-ray] warning: trouble" in err and "trouble" not in out
    configure(logging.INFO)


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(cli.build_parser(), ["--quiet", "--verbose"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_ray_and_tune_print_their_own_lines_only_when_verbose():
    assert [ray_log_level(LEVELS[name]) for name in ("quiet", "normal", "verbose")] == ["ERROR", "ERROR", "INFO"]
    assert [tune_verbosity(LEVELS[name]) for name in ("quiet", "normal", "verbose")] == [0, 1, 2]


def test_configure_is_idempotent():
    logger = configure(logging.INFO)
    handlers = list(logger.handlers)
    assert configure(logging.DEBUG).handlers == handlers and logger.level == logging.DEBUG
    configure(logging.INFO)
