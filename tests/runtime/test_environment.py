"""Configuration reading: every problem reported at once, secrets never echoed."""

import pytest

from runtime.environment import ConfigError, Environment


def test_integer_reads_default_value_and_reports_bad_ones():
    env = Environment({"A": "12", "B": "x", "C": "0", "D": "70000"})
    assert env.integer("A", 1) == 12
    assert env.integer("MISSING", 7) == 7
    assert env.integer("B", 3) == 3
    assert env.integer("C", 5, minimum=1) == 5
    assert env.integer("D", 8080, minimum=1, maximum=65535) == 8080
    assert env.problems == [
        "B must be a whole number, got 'x'",
        "C must be at least 1, got 0",
        "D must be at least 1 and at most 65535, got 70000",
    ]
    with pytest.raises(ConfigError) as error:
        env.check()
    assert error.value.problems == env.problems
    assert str(error.value).startswith("configuration error: B must")


def test_choice_is_case_insensitive_and_checked():
    env = Environment({"LOG_FORMAT": "JSON", "LOG_LEVEL": "loud"})
    assert env.choice("LOG_FORMAT", "text", ("text", "json")) == "json"
    assert env.choice("LOG_LEVEL", "info", ("info", "debug")) == "info"
    assert env.problems == ["LOG_LEVEL must be one of info, debug, got 'loud'"]


def test_url_problem_names_the_variable_but_never_its_value():
    env = Environment({"MONGODB_URI": "postgres://user:s3cret@db/x"})
    env.url("MONGODB_URI", None, ("mongodb", "mongodb+srv"))
    assert env.problems == ["MONGODB_URI must start with mongodb:// or mongodb+srv://"]
    assert "s3cret" not in str(env.problems)


def test_secret_from_variable_or_file(tmp_path):
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file-token\n")
    assert Environment({"API_TOKEN": " direct "}).secret("API_TOKEN", required=True) == "direct"
    env = Environment({"API_TOKEN_FILE": str(secret_file)})
    assert env.secret("API_TOKEN", required=True) == "from-file-token"
    assert env.problems == []


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({}, "API_TOKEN (or API_TOKEN_FILE) is required"),
        ({"API_TOKEN": "a", "API_TOKEN_FILE": "/x"}, "set API_TOKEN or API_TOKEN_FILE, not both"),
        ({"API_TOKEN_FILE": "/nonexistent/token"}, "API_TOKEN_FILE cannot be read: No such file or directory"),
    ],
)
def test_secret_problems(environ, problem):
    env = Environment(environ)
    assert env.secret("API_TOKEN", required=True) is None
    assert env.problems == [problem]


def test_empty_secret_file_is_a_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    env = Environment({"API_TOKEN_FILE": str(empty)})
    assert env.secret("API_TOKEN", required=False) is None
    assert env.problems == ["API_TOKEN_FILE names an empty file"]


def test_optional_secret_may_be_absent():
    env = Environment({})
    assert env.secret("TELEGRAM_WEBHOOK_SECRET", required=False) is None
    env.check()


def test_url_with_password_puts_the_file_password_in_the_url(tmp_path):
    secret = tmp_path / "mongodb_password"
    secret.write_text("p@ss/word:1\n")
    env = Environment(
        {
            "MONGODB_URI": "mongodb://balcao@mongo:27017,mongo2:27017/balcao?authSource=balcao",
            "MONGODB_PASSWORD_FILE": str(secret),
        }
    )
    uri = env.url_with_password("MONGODB_URI", None, ("mongodb",), password="MONGODB_PASSWORD")
    assert uri == "mongodb://balcao:p%40ss%2Fword%3A1@mongo:27017,mongo2:27017/balcao?authSource=balcao"
    assert env.problems == []


def test_url_with_password_leaves_a_url_alone_without_one():
    env = Environment({"NATS_URL": "nats://server:inline@nats:4222"})
    assert (
        env.url_with_password("NATS_URL", None, ("nats",), password="NATS_PASSWORD") == "nats://server:inline@nats:4222"
    )
    assert env.problems == []


def test_url_with_password_reports_what_does_not_fit():
    env = Environment(
        {
            "A_URL": "nats://nats:4222",
            "A_PASSWORD": "secret-one",
            "B_URL": "nats://user:inline@nats:4222",
            "B_PASSWORD": "secret-two",
            "C_URL": "nats://user@nats:4222",
            "C_PASSWORD": "needs%encoding",
        }
    )
    for name in ("A", "B", "C"):
        assert env.url_with_password(
            f"{name}_URL", None, ("nats",), password=f"{name}_PASSWORD", decoded=False
        ) == env.text(f"{name}_URL")
    assert env.problems == [
        "A_PASSWORD needs a user name in A_URL (scheme://USER@host)",
        "set the password in B_URL or in B_PASSWORD, not both",
        "C_PASSWORD may hold only A-Z, a-z, 0-9 and . _ ~ -",
    ]
    assert not any("secret" in problem or "encoding" in problem for problem in env.problems)
