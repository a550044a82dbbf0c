from datetime import UTC, datetime

from watcher.isales.signer import Signer

AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
PATH = "/rest/isales/v1/openapi/campaigns/1/calldatafile/queryDataImportTask/1001"
HOST = "10.22.26.181:28080"
BODY = '{"offset":0,"limit":10}'


def test_matches_the_published_vector() -> None:
    signer = Signer("globalaktest", "example-secret-key")
    assert signer.authorization("POST", PATH, {"Host": HOST}, BODY, at=AT) == (
        "auth-v2/globalaktest/2024-01-02T03:04:05Z/host/"
        "be3637768228a4f78fa6cf23806ba4b45dc729e9b683297420321ec9cec6b073"
    )


def test_signing_content_type_too_matches_the_research_vector() -> None:
    signer = Signer("globalaktest", "example-secret-key")
    headers = {"Content-Type": "application/json;charset=UTF-8", "host": HOST}
    assert signer.authorization("POST", PATH, headers, BODY, at=AT) == (
        "auth-v2/globalaktest/2024-01-02T03:04:05Z/content-type;host/"
        "2036846ee238c7181680478dcee19a83df705c68ff7a3d48ab002d9e011e987c"
    )


def test_a_wrong_secret_gives_another_signature() -> None:
    good = Signer("globalaktest", "example-secret-key").authorization(
        "POST", PATH, {"host": HOST}, BODY, at=AT
    )
    bad = Signer("globalaktest", "another-key").authorization(
        "POST", PATH, {"host": HOST}, BODY, at=AT
    )
    assert good != bad


def test_repr_hides_the_secret() -> None:
    assert "example-secret-key" not in repr(Signer("globalaktest", "example-secret-key"))
