"""Disk locators by scheme (``vmguard.vm.access.open_locator``): ``vddk`` is built in,
any other scheme comes from the entry-point group an installed distribution registers in.
The lab's distribution (installed by ``make venv``) registers ``lab``; these tests find
it through the real installed metadata, and build no connection (a locator connects only
when a disk is opened)."""

from __future__ import annotations

import pytest

from vmguard.errors import ConfigError
from vmguard.vm.access import open_locator
from vmguard.vsphere.session import Endpoint
from vmguard_lab.vsim import LabDiskLocator

pytestmark = pytest.mark.unit

EP = Endpoint("https://vc.example/sdk", "user", "password")


def test_the_lab_registers_its_locator_by_scheme() -> None:
    locator = open_locator("lab:http://127.0.0.1:9/,proxy=4213-abcd", EP, vddk_libdir="/opt/vddk")
    assert isinstance(locator, LabDiskLocator)
    assert locator.control.base == "http://127.0.0.1:9"
    assert locator.proxy_bios_uuid() == "4213-abcd"
    plain = open_locator("lab:http://127.0.0.1:9", EP, vddk_libdir="/opt/vddk")
    assert isinstance(plain, LabDiskLocator) and plain.proxy_bios_uuid() == ""
    assert plain.cbt == "reset"
    keep = open_locator("lab:http://127.0.0.1:9,cbt=keep", EP, vddk_libdir="/opt/vddk")
    assert isinstance(keep, LabDiskLocator) and keep.cbt == "keep"


def test_an_unknown_locator_is_a_clear_error_naming_the_known_ones() -> None:
    for spec in ("nfs:/x", "vddk:extra", ""):
        with pytest.raises(ConfigError) as err:
            open_locator(spec, EP, vddk_libdir="/opt/vddk")
        assert f"unknown disk locator {spec!r}" in str(err.value)
        assert "vddk" in str(err.value) and "lab:..." in str(err.value)
