"""The pure checks of an upload: template names, relative paths, a .sumocfg's options read as SUMO
reads them, and where a config sends an output. (Whole uploads: tests/test_uploads.py.)"""

from __future__ import annotations

import gzip

import pytest

from actors.errors import InvalidRequest, InvalidTemplate
from actors.scenario import (
    MAX_PATH_LEN,
    check_relative_path,
    config_output,
    sumocfg_options,
    validate_name,
)

# ---- names and paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["city", "a", "0", "grid_3x3.v2-final", "a" * 63])
def test_a_good_template_name_passes(name: str):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "City", "-a", ".a", "_a", "a b", "a/b", "a\n", "é", "a" * 64, "a\x00"]
)
def test_a_bad_template_name_is_refused(name: str):
    with pytest.raises(InvalidRequest) as caught:
        validate_name(name)
    assert caught.value.detail["field"] == "name"


@pytest.mark.parametrize(
    "path", ["a.xml", "net/city.net.xml.gz", "a/b/c/d.rou.xml", "..a", "a..b/c", ".hidden"]
)
def test_a_clean_relative_path_passes(path: str):
    assert check_relative_path(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "is empty or too long"),
        ("a" * (MAX_PATH_LEN + 1), "is empty or too long"),
        ("a\x00b", "contains a NUL or backslash"),
        ("net\\city.net.xml", "contains a NUL or backslash"),
        ("/etc/passwd", "must be a relative path"),
        ("C:city.net.xml", "must be a relative path"),
        ("..", "must not contain"),
        ("../a.xml", "must not contain"),
        ("net/../../a.xml", "must not contain"),
        ("./a.xml", "must not contain"),
        ("net//a.xml", "must not contain"),
        ("net/", "must not contain"),
    ],
)
def test_a_path_that_could_leave_its_root_is_refused(path: str, why: str):
    with pytest.raises(InvalidTemplate) as caught:
        check_relative_path(path, what="config")
    assert caught.value.status == 422
    assert caught.value.message.startswith(f"config {why}")


def test_the_longest_path_passes():
    assert check_relative_path("a" * MAX_PATH_LEN) == "a" * MAX_PATH_LEN


# ---- a config's options ------------------------------------------------------------------------


def cfg(*options: str, root: str = "configuration") -> bytes:
    return f"<{root}>{''.join(options)}</{root}>".encode()


def test_options_come_from_value_v_or_text_with_their_section():
    data = cfg(
        '<input><net-file value="n.net.xml"/><route-files v="a.rou.xml,b.rou.xml"/></input>',
        "<output><tripinfo-output>trips.xml</tripinfo-output></output>",
    )
    assert sumocfg_options(data, "cfg/x.sumocfg") == [
        ("input", "net-file", "n.net.xml"),
        ("input", "route-files", "a.rou.xml,b.rou.xml"),
        ("output", "tripinfo-output", "trips.xml"),
    ]


def test_a_sumo_configuration_root_is_a_config_too():
    data = cfg('<net-file value="n.net.xml"/>', root="sumoConfiguration")
    assert sumocfg_options(data, "x.sumocfg") == [("sumoConfiguration", "net-file", "n.net.xml")]


def test_a_gzipped_config_is_read_inflated():
    data = gzip.compress(cfg('<input><net-file value="n.net.xml"/></input>'))
    assert sumocfg_options(data, "x.sumocfg") == [("input", "net-file", "n.net.xml")]


def test_a_file_that_is_not_a_config_is_refused():
    with pytest.raises(
        InvalidTemplate, match=r"not a SUMO configuration \(root element <routes>\)"
    ):
        sumocfg_options(b"<routes/>", "x.sumocfg")


def test_a_doctype_in_a_config_is_refused():
    data = b'<!DOCTYPE c [<!ENTITY e "n.net.xml">]><configuration/>'
    with pytest.raises(InvalidTemplate, match="DTDs are not allowed"):
        sumocfg_options(data, "x.sumocfg")


@pytest.mark.parametrize(
    ("option", "why"),
    [
        ('<summary-output value="/tmp/s.xml"/>', "must be a relative path"),
        ('<route-files value="a.rou.xml, ../../b.rou.xml"/>', "points outside the template"),
        ('<error-log value="${HOME}/e.log"/>', "uses ${HOME}"),
        ('<tripinfo-output value="~/t.xml"/>', "starts with '~'"),
        ('<output-prefix value="run/"/>', "must not contain '/'"),
        ('<fcd-output value="collector:9000"/>', "names a network address"),
        ('<summary-output value="_supervisor/s.xml"/>', "is in _supervisor/"),
    ],
)
def test_an_option_reaching_outside_is_refused_naming_it(option: str, why: str):
    with pytest.raises(InvalidTemplate) as caught:
        sumocfg_options(cfg(option), "x.sumocfg")
    assert why in caught.value.message
    assert caught.value.detail["option"] in option


def test_the_config_folder_is_where_relative_paths_start():
    # One level down, '..' stays inside the template; from the root it would not.
    option = '<route-files value="../demand/r.rou.xml"/>'
    assert sumocfg_options(cfg(option), "cfg/x.sumocfg")[0][2] == "../demand/r.rou.xml"
    with pytest.raises(InvalidTemplate, match="points outside"):
        sumocfg_options(cfg(option), "x.sumocfg")


@pytest.mark.parametrize(
    "value", ["/dev/null", "out-${PID}.xml", "${UTC}/x.xml", "a.xml;b.xml", "../x.xml/../y.xml"]
)
def test_values_sumo_keeps_inside_pass(value: str):
    [(_, _, got)] = sumocfg_options(cfg(f'<tripinfo-output value="{value}"/>'), "cfg/x.sumocfg")
    assert got == value


# ---- where a config sends an output ------------------------------------------------------------

SUMMARY = ("summary-output", "summary")


def test_an_output_is_given_relative_to_the_templates_root():
    data = cfg('<output><summary-output value="../out/s.xml"/></output>')
    assert config_output(data, "cfg/run.sumocfg", SUMMARY) == "out/s.xml"
    data = cfg('<output><summary-output value=" s.xml "/></output>')
    assert config_output(data, "cfg/run.sumocfg", SUMMARY) == "cfg/s.xml"


def test_any_of_the_names_counts_and_the_last_one_wins():
    data = cfg('<summary-output value="first.xml"/><summary value="second.xml"/>')
    assert config_output(data, "x.sumocfg", SUMMARY) == "second.xml"


@pytest.mark.parametrize(
    "option",
    [
        '<tripinfo-output value="t.xml"/>',  # not one of the names
        '<summary-output value="/dev/null"/>',  # turned off
        '<summary-output value="s-${PID}.xml"/>',  # completed by SUMO as it runs
        '<summary-output value=" "/>',
        '<summary-output value="/abs/s.xml"/>',  # would not pass the upload checks
    ],
)
def test_no_output_path_when_the_config_names_none_sumo_writes_here(option: str):
    assert config_output(cfg(option), "x.sumocfg", SUMMARY) is None


def test_no_output_path_from_a_config_that_is_not_one():
    assert config_output(b"<routes/>", "x.sumocfg", SUMMARY) is None
    assert config_output(b"<configuration>", "x.sumocfg", SUMMARY) is None


def test_a_config_over_the_size_cap_names_no_output_rather_than_failing_the_session():
    # A template stored before the checks existed may hold one; SUMO, in its sandbox, decides.
    padding = "<!-- " + "x" * (4 * 1024 * 1024) + " -->"
    data = cfg(f'<summary-output value="s.xml"/>{padding}')
    assert config_output(data, "x.sumocfg", SUMMARY) is None
