"""secflow.redaction: secrets out, ordinary text untouched (rule 7 of docs/architecture.md)."""

from __future__ import annotations

import sys

import pytest

from secflow.redaction import REDACTED, is_sensitive_key, redact, redact_event, redact_value

# (text as it shows up in logs, errors or tool output; the secret that must not survive)
SECRETS: list[tuple[str, str]] = [
    # Authorization and friends
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzZWNmbG93In0.c2lnbmF0dXJlLXNlY3JldA", "c2lnbmF0dXJlLXNlY3JldA"),
    ("authorization: Basic YWRtaW46aHVudGVyMg==", "YWRtaW46aHVudGVyMg"),
    ("Proxy-Authorization: Basic cHJveHk6cHJveHlwYXNz", "cHJveHk6cHJveHlwYXNz"),
    ("Authorization: Token 9f8e7d6c5b4a39281706f5e4d3c2b1a0", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    ('Authorization: Digest username="scan", realm="api", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", response="6629fae49393a05397450978507c4ef1"',
     "6629fae49393a05397450978507c4ef1"),
    ("{'Authorization': 'Bearer sk-live-abcdef1234567890', 'Accept': 'application/json'}", "sk-live-abcdef1234567890"),
    ('{"headers": {"Authorization": "Bearer tok_9Zx8Yw7Vu6Ts5Rq4"}}', "tok_9Zx8Yw7Vu6Ts5Rq4"),
    ("curl -H 'Authorization: Bearer 0b79bab50daca910b000d4f1a2b675d604257e42' https://api.example.com", "0b79bab50daca910b000d4f1a2b675d604257e42"),
    ("retrying with Bearer 7f3a9c2e1b5d8f4a6c0e", "7f3a9c2e1b5d8f4a6c0e"),
    # key=value / key: value / JSON / YAML / CLI flags
    ("password=hunter2", "hunter2"),
    ("DB_PASSWORD=Sup3rS3cret! ./migrate", "Sup3rS3cret!"),
    ("connecting with passwd: 'pa ss word 123'", "pa ss word 123"),
    ("mysql -h db -u root --password=r00tpw", "r00tpw"),
    ("pwd=Zebra42&user=bob", "Zebra42"),
    ("client_secret=9a8b7c6d5e4f3a2b1c0d", "9a8b7c6d5e4f3a2b1c0d"),
    ("GET /oauth/callback?code=abc&access_token=ya29.a0AfH6SMBx3exampletoken&state=xyz HTTP/1.1", "ya29.a0AfH6SMBx3exampletoken"),
    ("https://api.example.com/v1/scan?api_key=4f3c2b1a0e9d8c7b6a5f&page=2", "4f3c2b1a0e9d8c7b6a5f"),
    ("apikey: 0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("X-Api-Key: xk_live_5d4c3b2a1f0e", "xk_live_5d4c3b2a1f0e"),
    ("api-key: 77a1b2c3d4e5f6a7b8c9", "77a1b2c3d4e5f6a7b8c9"),
    ('{"api_key": "k-1234567890abcdef", "target": "10.0.0.5"}', "k-1234567890abcdef"),
    ('{"token": 123456789012, "count": 3}', "123456789012"),
    ("token: glsa_abc123def456ghi789", "glsa_abc123def456ghi789"),
    ('{"body": "{\\"password\\": \\"esc4ped-pw\\"}"}', "esc4ped-pw"),
    ("  password: 'yaml-pass-1'", "yaml-pass-1"),
    ('routing_key: "R0UT1NGKEY0123456789abcdefabcdef"', "R0UT1NGKEY0123456789abcdefabcdef"),
    ("smtp_pass=M41lP4ss", "M41lP4ss"),
    ("session_token=IQoJb3JpZ2luX2VjEJr", "IQoJb3JpZ2luX2VjEJr"),
    ("X-Amz-Security-Token: FwoGZXIvYXdzEBYaDH", "FwoGZXIvYXdzEBYaDH"),
    ("https://bucket.s3.amazonaws.com/x?X-Amz-Credential=scanner%2F20240101&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
     "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"),
    ("secflow --token s3cr3tvalue123 --target 10.0.0.5", "s3cr3tvalue123"),
    ("wget --http-password=w3tpass http://127.0.0.1/file", "w3tpass"),
    ("curl -u admin:Adm1nPassw0rd https://127.0.0.1:8443/api", "Adm1nPassw0rd"),
    ("nuclei -H 'X-Api-Key: 5ecr3tK3yV4lu3' -u http://10.0.0.5", "5ecr3tK3yV4lu3"),
    # credentials in URLs
    ("postgres://secflow:pgpass%40123@db.internal:5432/secflow", "pgpass%40123"),
    ("redis://:r3d1sP4ss@127.0.0.1:6379/0", "r3d1sP4ss"),
    ("amqp://guest:guest123@rabbit:5672/", "guest123"),
    ('DATABASE_URL="postgresql://app:app_pw_991@10.0.0.3/app"', "app_pw_991"),
    ("postgres://admin:p#ss@w0rd@db.internal:5432/secflow", "w0rd"),
    ("https://x-access-token:ghs_16C7e42F292c6912E7710c838347Ae178B4a@github.com/acme/app.git", "ghs_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("git clone https://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@github.com/acme/private.git", "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"),
    # token formats that are secrets anywhere
    ("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("found key ASIAY34FZKBOKMUTVV7A in the environment", "ASIAY34FZKBOKMUTVV7A"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("GITHUB_TOKEN is ghp_1234567890abcdefghijABCDEFGHIJ123456", "ghp_1234567890abcdefghijABCDEFGHIJ123456"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"),
    ("oauth app token gho_16C7e42F292c6912E7710c838347Ae178B4a", "gho_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("slack token xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "AbCdEfGhIjKlMnOpQrStUvWx"),
    ("xoxp-2222222222-3333333333-4444444444-abcdefabcdefabcdefabcdefabcdefab", "abcdefabcdefabcdefabcdefabcdefab"),
    ("posting to https://hooks.slack.com/services/T024BE7LD/B01ABCDEF12/Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2", "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2"),
    ("jwt eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJpc3MiOiJzZWNmbG93In0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"),
    ("Stripe key sk_live_51H8abcdefghijklmnopqrstuv", "sk_live_51H8abcdefghijklmnopqrstuv"),
    ("google key AIzaSyA1234567890abcdefghijklmnopqrstuv", "AIzaSyA1234567890abcdefghijklmnopqrstuv"),
    ("npm token npm_abcdefghijklmnopqrstuvwxyz0123456789", "npm_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY-----",
     "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun"),
    ("key file:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\ndone", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"),
    ("stderr tail: -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49", "MHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY"),
    # cookies
    ("Cookie: sessionid=8f14e45fceea167a5a36dedd4bea2543; csrftoken=abc", "8f14e45fceea167a5a36dedd4bea2543"),
    ("Set-Cookie: JSESSIONID=1A530637289A03B07199A44E8D531427; Path=/; HttpOnly", "1A530637289A03B07199A44E8D531427"),
    ('{"Cookie": "PHPSESSID=el4ukv0kqbvoirg7nkp4dncpk3"}', "el4ukv0kqbvoirg7nkp4dncpk3"),
]

INNOCENT: list[str] = [
    "Connecting to scanme.local:8443 over TLS",
    "CVE-2021-44228 affects log4j-core 2.14.1 (CVSS 10.0)",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "ECDSA key fingerprint is SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8.",
    "/var/lib/secflow/workspaces/42/nmap.xml",
    "ssh://git@github.com/acme/app.git",
    "git@github.com:acme/app.git",
    "https://example.com:8443/api/v1/items?page=2&per_page=100",
    "postgres://db.internal:5432/secflow",
    "max_tokens=4096 tokens_used=1532",
    "Bearer authentication required",
    "The password field is required",
    "token expired, please re-authenticate",
    "SyntaxError: Unexpected token } in JSON at position 12",
    "expected token: '}'",
    "HTTP 401 Unauthorized: invalid credentials",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "nmap -sV -p 1-1024 10.0.0.0/24",
    "password_policy: min_length=12",
    "10.0.0.5:22 open ssh OpenSSH 8.9p1 Ubuntu 3ubuntu0.6",
    "error: --token is required",
    "Set up the secret store before the first run",
    "User-Agent: secflow/0.1 (+https://example.com)",
    "run 123e4567-e89b-12d3-a456-426614174000 attempt=2 workflow_id=assess-42",
    "sort -u /tmp/hosts.txt",
    "WWW-Authenticate: Bearer realm=\"api\", error=\"invalid_token\"",
]


@pytest.mark.parametrize(("text", "secret"), SECRETS, ids=[f"secret-{i}" for i in range(len(SECRETS))])
def test_secret_is_removed(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out, out
    assert REDACTED in out
    assert redact(out) == out, "redaction is idempotent"


@pytest.mark.parametrize("text", INNOCENT, ids=[f"innocent-{i}" for i in range(len(INNOCENT))])
def test_innocent_text_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_tables_are_big_enough() -> None:
    assert len(SECRETS) >= 40
    assert len(INNOCENT) >= 15


def test_context_is_kept_around_secrets() -> None:
    assert redact("postgres://secflow:pw@db.internal:5432/x") == "postgres://secflow:[REDACTED]@db.internal:5432/x"
    assert redact("Authorization: Bearer abcdef0123456789") == "Authorization: Bearer [REDACTED]"
    assert redact("GET /x?access_token=abc123&page=2") == "GET /x?access_token=[REDACTED]&page=2"
    assert redact('{"password": "x1", "user": "bob"}') == '{"password": "[REDACTED]", "user": "bob"}'
    assert redact("f(password=abc123)") == "f(password=[REDACTED])"
    assert redact("https://hooks.slack.com/services/T1/B2/c3d4") == "https://hooks.slack.com/services/[REDACTED]"


@pytest.mark.parametrize(
    "key",
    ["password", "DB_PASSWORD", "passwd", "client_secret", "api_key", "apiKey", "X-Api-Key", "Authorization",
     "cookie", "Set-Cookie", "aws_access_key_id", "private_key", "credentials", "session_id", "refresh_token", "pwd", "auth"],
)
def test_sensitive_keys(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize("key", ["host", "port", "severity", "author", "event", "attempt", "workflow_id", "fingerprint", "keyword"])
def test_ordinary_keys(key: str) -> None:
    assert not is_sensitive_key(key)


def test_redact_value_recurses() -> None:
    data = {
        "target": "10.0.0.5",
        "password": 1234,  # a sensitive key is redacted whatever its value
        "auth": ("user", "pw"),
        "headers": {"Authorization": "Bearer abc", "Accept": "json"},
        "urls": ["https://u:p4ss@h/x", "https://h/y"],
        "nested": [{"api_key": None}, ("token=t0k3nvalue", 3)],
        "raw": b"Cookie: sid=abcdef",
        "count": 7,
        "tags": {"a", "password=xyz987"},
    }
    out = redact_value(data)
    assert out["target"] == "10.0.0.5" and out["count"] == 7
    assert out["password"] == REDACTED and out["auth"] == REDACTED
    assert out["headers"] == {"Authorization": REDACTED, "Accept": "json"}
    assert out["urls"] == ["https://u:[REDACTED]@h/x", "https://h/y"]
    assert out["nested"][0] == {"api_key": REDACTED}
    assert out["nested"][1] == ("token=[REDACTED]", 3)
    assert out["raw"] == b"Cookie: [REDACTED]"
    assert out["tags"] == {"a", "password=[REDACTED]"}
    assert data["password"] == 1234, "the input is not modified"


def test_redact_event_processor() -> None:
    try:
        raise RuntimeError("login failed for https://admin:hunter2@127.0.0.1/")
    except RuntimeError:
        exc_info = sys.exc_info()

    class Opaque:
        def __repr__(self) -> str:
            return "Opaque(token=opaque-secret-1)"

    event = {
        "event": "request with api_key=evt-secret-2",
        "client_secret": "evt-secret-3",
        "obj": Opaque(),
        "exc_info": exc_info,
        "n": 1,
        "ok": True,
        "none": None,
    }
    out = redact_event(None, "error", event)
    rendered = repr(out)
    for secret in ("hunter2", "opaque-secret-1", "evt-secret-2", "evt-secret-3"):
        assert secret not in rendered
    assert "RuntimeError" in out["exception"] and "exc_info" not in out
    assert out["n"] == 1 and out["ok"] is True and out["none"] is None


# --- issue 11: prose after "token:" / "secret:" is not a secret; credentials still are -------
PROSE_KEPT = [
    "xml.etree.ElementTree.ParseError: unclosed token: line 19, column 36",  # nmap XML cut short
    "not well-formed (invalid token): line 3, column 7",
    "Missing token: line 19, column 36",
    "CSRF token: missing",
    "Hard-coded secret: Secret Keyword",  # detect-secrets titles
    "Hard-coded secret: AWS Access Key",
    "Hard-coded secret: Base64 High Entropy String",
    "Hard-coded secret: GitHub Token",
    "Hard-coded secret: JSON Web Token",
    "Hard-coded secret: SendGrid API Key",
    "Hard-coded secret: NPM tokens",
    "Weak JWT secret: use a random 256-bit key",
    "session token: expired after 30m",
]
STILL_SECRET = [
    ("password: hunter2", "hunter2"),
    ("password: hunter", "hunter"),  # one word at the end of its line is a value
    ("password: hunter2 rejected by server", "hunter2"),  # a digit: not prose
    ("token=line 19", "line"),  # `=` assigns: never prose
    ("api_key => Sunshine extra", "Sunshine"),
    ("secret: Tr0ub4dor&3", "Tr0ub4dor"),
    ("  password: 'quoted words stay secret'", "quoted words stay secret"),
    ("client_secret: s3cr3t-value then more", "s3cr3t-value"),
]


@pytest.mark.parametrize("text", PROSE_KEPT)
def test_prose_after_a_secret_word_is_kept(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(("text", "secret"), STILL_SECRET)
def test_values_after_a_secret_word_are_still_redacted(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and REDACTED in out


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("HTTP Request: POST https://alerts.example.com/hooks/a1b2c3d4e5f6g7h8i9j0 \"HTTP/1.1 200 OK\"", "a1b2c3d4e5f6g7h8i9j0"),
        ("https://chat.googleapis.com/v1/spaces/AAA/messages?key=AIzaSyDdI0hCZtE6vy&token=t0k3n", "AIzaSyDdI0hCZtE6vy"),
        ("https://acme.webhook.office.com/webhookb2/1234-abcd@5678/IncomingWebhook/abcdef0123/9999", "abcdef0123"),
        ("https://api.telegram.org/bot123456:ABC-DEF1234ghIkl-zyx57W2v1u/sendMessage", "ABC-DEF1234ghIkl"),
        ("https://hooks.zapier.com/hooks/catch/123456/abcdef/", "abcdef"),
        ("https://maker.ifttt.com/trigger/alert/with/key/dEf456GhI789", "dEf456GhI789"),
        ("https://fn.azurewebsites.net/api/f?code=Zm9vYmFy0123==", "Zm9vYmFy0123"),
    ],
)
def test_webhook_urls_lose_their_tokens(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and REDACTED in out and redact(out) == out


@pytest.mark.parametrize("text", ["https://example.com/docs/hooks/getting-started", "https://example.com/api/webhooks/list"])
def test_ordinary_hook_paths_are_kept(text: str) -> None:
    assert redact(text) == text


def test_registered_values_are_scrubbed_whatever_they_look_like() -> None:
    from secflow.redaction import forget_secrets, register_secret

    try:
        register_secret("plain-looking-value", "short")
        assert redact("sent plain-looking-value and plain-looking%2Dvalue") == f"sent {REDACTED} and plain-looking%2Dvalue"
        assert redact("sent short") == "sent short", "values under 6 characters would blank ordinary words"
        register_secret("a/b c")  # too short: ignored
        register_secret("with space/and?")
        assert redact("url=https://h/with%20space%2Fand%3F") == f"url=https://h/{REDACTED}"
    finally:
        forget_secrets()
    assert redact("sent plain-looking-value") == "sent plain-looking-value"
