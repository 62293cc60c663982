from pydantic import SecretStr

from stream.worker import bearer_authorized


def test_without_a_token_every_request_passes():
    assert bearer_authorized(None, None) and bearer_authorized("Bearer anything", None)


def test_only_the_bearer_token_itself_passes():
    token = SecretStr("s3cret-t0ken")
    assert bearer_authorized("Bearer s3cret-t0ken", token)
    assert bearer_authorized("bearer  s3cret-t0ken ", token)  # scheme is case-insensitive
    for header in (None, "", "Bearer", "Bearer s3cret", "Bearer s3cret-t0ken2",
                   "Basic s3cret-t0ken", "s3cret-t0ken", "Bearer S3CRET-T0KEN"):  # fmt: skip
        assert not bearer_authorized(header, token), header
