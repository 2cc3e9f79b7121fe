"""Apply's commit steps register their undo: a rollback runs them newest first, and a
failed undo is logged and returned (reported with the apply's error), never swallowed.
Attachment records are typed; a record of an unknown kind is an error that says so."""

from __future__ import annotations

import logging

import pytest

from ebplane.errors import EbplaneError
from ebplane.net import attach
from ebplane.runtime.pipeline import Rollback


def test_rollback_runs_newest_first_and_reports_failures(caplog):
    done = []
    rb = Rollback()
    rb.add("first", lambda: done.append(1))

    def broken():
        raise EbplaneError("the link is gone")
    rb.add("second", broken)
    rb.add("third", lambda: done.append(3))
    with caplog.at_level(logging.WARNING, logger="ebplane.apply"):
        failed = rb.run()
    assert done == [3, 1]  # newest first, and a failure does not stop the others
    assert failed == ["second: the link is gone"]
    assert "rollback: could not second: the link is gone" in caplog.text
    assert rb.run() == [] and done == [3, 1]  # each undo runs once


@pytest.mark.parametrize("rec, kind", [
    ({"ifname": "x", "hook": "xdp", "method": "link", "link_pin": "/nonexistent"}, attach.XdpLink),
    ({"ifname": "x", "hook": "tc-ingress", "method": "tcx", "link_pin": "/n"}, attach.TcxLink),
    ({"ifname": "x", "hook": "xdp", "method": "netlink", "mode": "native"}, attach.XdpNetlink),
    ({"ifname": "x", "hook": "tc-egress", "method": "clsact", "tc_priority": 1,
      "tc_handle": 1}, attach.ClsactFilter),
    ({"ifname": "x", "hook": "xdp", "planned": True, "link_pin": "/n"}, attach.Planned),
])
def test_attachment_records_are_typed(rec, kind):
    a = attach.attached(rec)
    assert type(a) is kind and a.to_record() == rec


def test_a_link_whose_pin_is_gone_runs_nothing():
    rec = {"ifname": "x", "hook": "xdp", "method": "link", "link_pin": "/sys/fs/bpf/ebp-none"}
    assert attach.attached(rec).running() is None


def test_an_unknown_attachment_record_is_an_error():
    with pytest.raises(EbplaneError, match="unknown method 'carrier-pigeon'") as e:
        attach.attached({"ifname": "x", "hook": "xdp", "method": "carrier-pigeon"})
    assert "another ebplane version" in e.value.hint
