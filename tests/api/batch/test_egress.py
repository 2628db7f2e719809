"""The egress policy of webhooks: which URLs llmq may call, checked on the addresses a host
resolves to. Names that would resolve elsewhere go through a resolver passed in, so no test
sends anything beyond loopback."""

from __future__ import annotations

import ipaddress

import pytest

from llmq.api.batch.egress import EgressPolicy, EgressRefused, forbidden_reason


def fixed(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("no such host")
        return answers[host]

    return resolve


PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.5.6.7", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "100.127.255.254", "224.0.0.1", "239.255.255.250", "0.0.0.0",
        "240.0.0.1", "255.255.255.255", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1",
        "ff02::1", "::ffff:127.0.0.1", "::ffff:8.8.8.8", "::127.0.0.1", "2002:7f00:1::1",
        "64:ff9b::7f00:1", "2001:db8::1",
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://0x7f000001/hook",
        "https://127.1/hook",
        "https://2130706433/hook",
        "https://017700000001/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
    ],
)
async def test_loopback_in_any_spelling_is_refused(url: str) -> None:
    """The system resolver turns every spelling into the address it means (no traffic)."""
    with pytest.raises(EgressRefused, match="public addresses"):
        await EgressPolicy().check(url)


async def test_a_name_is_checked_on_every_address_it_resolves_to() -> None:
    policy = EgressPolicy(
        resolver=fixed({"ok.example": [PUBLIC], "mixed.example": [PUBLIC, "10.0.0.5"]})
    )
    target = await policy.check("https://ok.example/path?q=1")
    assert target.address == PUBLIC and target.host == "ok.example" and target.port == 443
    assert str(target.pinned_url) == f"https://{PUBLIC}/path?q=1"
    assert target.host_header == "ok.example"
    with pytest.raises(EgressRefused, match="private address"):
        await policy.check("https://mixed.example/")
    with pytest.raises(EgressRefused, match="cannot be resolved"):
        await policy.check("https://nowhere.example/")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://user:pw@ok.example/", "credentials"),
        ("https://user@ok.example/", "credentials"),
        ("http://ok.example/", "https"),
        ("ftp://ok.example/", "https"),
        ("http://[::1/x", "not a valid URL"),
        ("/relative", "https"),
    ],
)
async def test_form_of_the_url(url: str, message: str) -> None:
    policy = EgressPolicy(resolver=fixed({"ok.example": [PUBLIC]}))
    with pytest.raises(EgressRefused, match=message):
        await policy.check(url)


async def test_the_allow_list_admits_internal_receivers_and_plain_http() -> None:
    answers = {"hooks.internal": ["10.0.0.7"], "other.internal": ["10.0.0.8"]}
    policy = EgressPolicy(["hooks.internal", "127.0.0.1/32"], resolver=fixed(answers))
    target = await policy.check("http://hooks.internal:8080/x")
    assert target.address == "10.0.0.7" and target.host_header == "hooks.internal:8080"
    assert (await policy.check("http://127.0.0.1:9/x")).address == "127.0.0.1"
    with pytest.raises(EgressRefused):
        await policy.check("http://other.internal/x")
    with pytest.raises(EgressRefused):  # the CIDR is 127.0.0.1 alone
        await policy.check("http://127.0.0.2/x")
    with pytest.raises(ValueError):
        EgressPolicy(["not a host/or cidr"])


async def test_ipv6_targets_are_pinned_with_brackets() -> None:
    policy = EgressPolicy(["::1/128"])
    target = await policy.check("http://[::1]:8080/x")
    assert str(target.pinned_url) == "http://[::1]:8080/x"
    assert target.host_header == "[::1]:8080"
