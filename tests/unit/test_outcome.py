"""How a run ended -> the status, cause and message a user reads on the session."""

from __future__ import annotations

import signal

import pytest

from actors.messages import StopSession
from actors.outcome import Ending, EndingKind, Seen, classify, describe_exit, over_cap

LOAD_ERROR = "Error: File 'missing.rou.xml' is not accessible (No such file or directory)."


def seen(
    returncode: int | None = 0,
    stderr: list[str] | None = None,
    *,
    samples: int = 5,
    sim_time: float | None = 50.0,
    stop: StopSession | None = None,
    quota: int | None = None,
) -> Seen:
    return Seen(
        returncode=returncode,
        stderr_tail=stderr or [],
        samples=samples,
        sim_time=sim_time,
        stop=stop,
        quota_exceeded=quota,
    )


# ---- a stop, the row quota, and the timeouts the session itself keeps ---------------------------


def test_a_stop_request_ends_stopped_with_its_reason_and_no_cause():
    out = classify(Ending("stop"), seen(-9, stop=StopSession("stopped", "stop requested")))
    assert (out.status, out.reason, out.cause) == ("stopped", "stop requested", None)
    assert out.error is None
    assert (out.exit_code, out.sim_time) == (-9, 50.0)


def test_a_wall_clock_stop_ends_timed_out_with_cause_timeout():
    out = classify(Ending("stop"), seen(stop=StopSession("timed_out", "max_wall_s exceeded")))
    assert (out.status, out.reason, out.cause) == ("timed_out", "max_wall_s exceeded", "timeout")


def test_a_stop_that_killed_sumo_mid_jump_is_still_the_stop():
    # The supervisor kills a SUMO that ignores a stop: the session sees the connection break,
    # but the user asked for the stop and must not read "sumo_exited".
    stop = StopSession("timed_out", "max_wall_s exceeded")
    stderr = ["Error: tcpip::Socket::recvAndCheck @ recv: peer shutdown"]
    out = classify(Ending("traci_lost", "connection closed by SUMO"), seen(-9, stderr, stop=stop))
    assert (out.status, out.cause) == ("timed_out", "timeout")
    assert out.reason == "max_wall_s exceeded"


def test_traci_lost_without_a_stop_is_not_a_stop():
    out = classify(Ending("traci_lost", "closed"), seen(-9))
    assert out.status == "failed"


def test_the_row_quota_beats_completed():
    # The run reached its end, but rows past the quota were dropped: it is not whole.
    out = classify(Ending("completed", "end time reached"), seen(0, quota=1000))
    assert (out.status, out.cause) == ("failed", "row_quota")
    assert "max_session_rows (1000)" in (out.error or "")
    assert (out.exit_code, out.sim_time) == (0, 50.0)


def test_a_stop_beats_the_row_quota():
    out = classify(Ending("stop"), seen(quota=10, stop=StopSession("stopped", "stop requested")))
    assert out.status == "stopped"


def test_an_idle_stepped_session_times_out_with_cause_idle_timeout():
    out = classify(Ending("idle"), seen(-9))
    assert (out.status, out.cause) == ("timed_out", "idle_timeout")
    assert "idle_timeout_s" in out.reason
    assert (out.exit_code, out.sim_time) == (-9, 50.0)


def test_a_pause_held_too_long_times_out_with_cause_pause_timeout():
    out = classify(Ending("pause_timeout"), seen(-9))
    assert (out.status, out.cause) == ("timed_out", "pause_timeout")
    assert "max_pause_s" in out.reason


def test_completed_keeps_the_reason_it_was_given():
    out = classify(Ending("completed", "no vehicles left to simulate"), seen(0, sim_time=812.0))
    assert (out.status, out.reason, out.cause, out.error) == (
        "completed",
        "no vehicles left to simulate",
        None,
        None,
    )
    assert (out.exit_code, out.sim_time) == (0, 812.0)


def test_completed_is_completed_even_with_a_cap_message_in_stderr():
    # What SUMO said on its way out does not undo a run that reached its end.
    out = classify(Ending("completed", "end time reached"), seen(0, ["Error: file too large"]))
    assert out.status == "completed"


# ---- resource caps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "cap"),
    [
        ("terminate called after throwing an instance of 'std::bad_alloc'", "memory"),
        ("error while loading shared libraries: failed to map segment", "memory"),
        ("Error: Cannot allocate memory", "memory"),
        ("Error: Could not open 'out.xml' (Too many open files).", "open files"),
    ],
)
@pytest.mark.parametrize("kind", ["traci_lost", "exited_early", "connect_timeout"])
def test_a_cap_named_in_stderr_is_a_resource_limit(line: str, cap: str, kind: EndingKind):
    # Checked before the scenario is blamed: a SUMO stopped by its cap while loading did not
    # refuse the scenario (an exited_early would otherwise be config_invalid).
    out = classify(Ending(kind, "lost"), seen(1 if kind != "traci_lost" else -6, [line]))
    assert (out.status, out.cause) == ("failed", "resource_limit")
    assert out.reason == f"SUMO went over its {cap} cap"


def test_sigxfsz_is_the_file_size_cap_and_the_error_says_how_sumo_ended():
    out = classify(
        Ending("traci_lost", "closed"),
        seen(-signal.SIGXFSZ, ["Warning: something", "Error: writing failed"]),
    )
    assert (out.cause, out.reason) == ("resource_limit", "SUMO went over its file size cap")
    # SUMO's Error lines, then how it ended.
    assert out.error == "Error: writing failed\nSUMO was killed by SIGXFSZ"
    assert out.exit_code == -signal.SIGXFSZ


def test_a_cap_without_error_lines_shows_the_whole_tail():
    out = classify(Ending("exited_early"), seen(1, ["std::bad_alloc", "Quitting (on error)."]))
    assert out.error == "std::bad_alloc\nQuitting (on error).\nSUMO exited with code 1"


# ---- failures before the run -------------------------------------------------------------------


def test_a_sandbox_that_could_not_be_set_up_is_sandbox_failed():
    stderr = ["Error: sandbox: landlock_restrict_self: Operation not permitted", "noise"]
    out = classify(Ending("exited_early"), seen(1, stderr))
    assert (out.status, out.cause) == ("failed", "sandbox_failed")
    assert out.error == "Error: sandbox: landlock_restrict_self: Operation not permitted"
    assert out.exit_code == 1


def test_address_in_use_on_an_early_exit_is_port_in_use():
    # The session retries on another port when it sees this cause: the match must not depend
    # on SUMO's capitalisation.
    listen = "Error: tcpip::Socket: Unable to create listening socket: ADDRESS already in use"
    stderr = [listen, "Quitting (on error)."]
    out = classify(Ending("exited_early"), seen(1, stderr, samples=0, sim_time=None))
    assert (out.status, out.cause) == ("failed", "port_in_use")
    assert "already in use" in (out.error or "")


def test_address_in_use_after_connecting_is_not_port_in_use():
    # Once TraCI connected, the port was SUMO's: a retry on another port would not help.
    stderr = ["Error: Address already in use"]
    out = classify(Ending("traci_lost", "closed"), seen(2, stderr))
    assert out.cause != "port_in_use"


def test_an_early_exit_is_config_invalid_with_the_error_lines_only():
    stderr = ["Warning: deprecated attribute", LOAD_ERROR, "Quitting (on error)."]
    out = classify(Ending("exited_early"), seen(1, stderr, samples=0, sim_time=None))
    assert (out.status, out.cause) == ("failed", "config_invalid")
    assert out.reason == "SUMO could not load the scenario"
    assert out.error == LOAD_ERROR
    assert out.exit_code == 1


def test_an_early_exit_without_error_lines_shows_the_tail_or_the_code():
    out = classify(Ending("exited_early"), seen(1, ["Quitting (on error)."], samples=0))
    assert (out.cause, out.error) == ("config_invalid", "Quitting (on error).")
    out = classify(Ending("exited_early"), seen(3, [], samples=0))
    assert (out.cause, out.error) == ("config_invalid", "sumo exited with code 3")


def test_a_route_error_at_the_first_step_is_config_invalid():
    # SUMO reads routes as it runs: a bad route file may only fail the first step, after TraCI
    # connected. With no sample taken, exit code 1 and an Error line, SUMO refused the scenario.
    stderr = ["Error: The vehicle 'v0' has no valid route.", "Quitting (on error)."]
    out = classify(Ending("traci_lost", "closed"), seen(1, stderr, samples=0, sim_time=0.0))
    assert (out.cause, out.error) == ("config_invalid", stderr[0])


@pytest.mark.parametrize(
    ("returncode", "stderr", "samples"),
    [
        (1, [LOAD_ERROR], 3),  # a sample was taken: the scenario loaded and ran
        (1, ["Quitting (on error)."], 0),  # no Error line
        (-9, [LOAD_ERROR], 0),  # killed, not an error exit
    ],
)
def test_a_lost_connection_is_config_invalid_only_with_all_three_signs(
    returncode: int, stderr: list[str], samples: int
):
    out = classify(Ending("traci_lost", "closed"), seen(returncode, stderr, samples=samples))
    assert out.cause == "sumo_exited"


def test_sumo_that_never_opened_its_port_is_a_timeout():
    out = classify(Ending("connect_timeout"), seen(None, ["Loading net-file ... done"]))
    assert (out.status, out.cause) == ("failed", "timeout")
    assert out.reason == "SUMO did not open its TraCI port in time"
    assert out.error == "Loading net-file ... done"
    out = classify(Ending("connect_timeout"), seen(None, []))
    assert out.error is None


# ---- the connection lost mid-run ---------------------------------------------------------------


def test_sumo_dying_mid_run_is_sumo_exited_with_how_it_died():
    stderr = ["Step #120.00", "Error: Vehicle 'v3' collided."]
    out = classify(Ending("traci_lost", "peer shutdown"), seen(-11, stderr, sim_time=120.0))
    assert (out.status, out.cause) == ("failed", "sumo_exited")
    assert out.reason == "SUMO was killed by SIGSEGV during the simulation"
    assert out.error == "Error: Vehicle 'v3' collided.\npeer shutdown (was killed by SIGSEGV)"
    assert (out.exit_code, out.sim_time) == (-11, 120.0)


def test_sumo_exiting_nonzero_mid_run_is_sumo_exited():
    out = classify(Ending("traci_lost", "peer shutdown"), seen(4, []))
    assert out.cause == "sumo_exited"
    assert out.reason == "SUMO exited with code 4 during the simulation"
    assert out.error == "peer shutdown (exited with code 4)"


@pytest.mark.parametrize("returncode", [0, None])
def test_a_connection_closed_while_sumo_is_fine_is_traci_closed(returncode: int | None):
    out = classify(Ending("traci_lost", "socket closed"), seen(returncode, ["Step #3.00"]))
    assert (out.cause, out.reason) == ("traci_closed", "TraCI connection lost")
    how = describe_exit(returncode)
    assert out.error == f"Step #3.00\nsocket closed ({how})"


# ---- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (None, "still running"),
        (0, "exited with code 0"),
        (2, "exited with code 2"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-signal.SIGTERM, "was killed by SIGTERM"),
        (-200, "was killed by signal 200"),  # no such signal: its number
    ],
)
def test_describe_exit(returncode: int | None, text: str):
    assert describe_exit(returncode) == text


def test_over_cap():
    assert over_cap(-signal.SIGXFSZ, []) == "file size"
    assert over_cap(1, ["Error: File too large"]) == "file size"
    assert over_cap(1, ["ok", "TOO MANY OPEN FILES"]) == "open files"
    assert over_cap(-signal.SIGKILL, ["Error: no route"]) is None
    assert over_cap(None, []) is None
    # The first line that names a cap decides.
    assert over_cap(1, ["std::bad_alloc", "Too many open files"]) == "memory"


@pytest.mark.parametrize("kind", ["exited_early", "connect_timeout", "idle", "pause_timeout"])
def test_a_stop_wins_over_any_early_end(kind: EndingKind):
    # The stop's escalation kills a SUMO that is still starting: the session sees it exit
    # before TraCI connected, which alone would read as a scenario SUMO refused.
    stop = StopSession("stopped", "stop requested")
    out = classify(Ending(kind), seen(-9, [LOAD_ERROR], samples=0, stop=stop))
    assert (out.status, out.reason, out.cause) == ("stopped", "stop requested", None)


def test_a_run_that_completed_before_its_stop_took_effect_is_completed():
    stop = StopSession("stopped", "stop requested")
    out = classify(Ending("completed", "end time reached"), seen(0, stop=stop))
    assert out.status == "completed"
